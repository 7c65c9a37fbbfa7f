# Named targets for running the workflow stage by stage or split by split (see README).


rule prompt_sets:
    input:
        get_all_prompt_shard_summaries,


rule sam_precompute:
    input:
        get_all_precompute_shard_summaries,


rule train:
    input:
        [run.training_summary for run in head_runs()],


rule sanity_check:
    input:
        [run.sanity_check for run in head_runs()],


rule sanity_panels:
    input:
        PROJECT.panels_listing("train"),


for _split in SPLITS:

    rule:
        name:
            f"split_{_split}"
        input:
            [run.split_h5(_split) for run in head_runs()],
