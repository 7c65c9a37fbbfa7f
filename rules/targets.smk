# Named targets for running the workflow stage by stage or split by split (see README).


rule prompt_sets:
    input:
        get_all_prompt_shard_summaries,


rule sam_precompute:
    input:
        get_all_precompute_shard_summaries,


rule train:
    input:
        RUN.training_summary,


rule sanity_check:
    input:
        RUN.sanity_check,


rule sanity_panels:
    input:
        PROJECT.panels_listing("train"),


for _split in SPLITS:

    rule:
        name:
            f"split_{_split}"
        input:
            PROJECT.split_h5(_split),
