# Named targets for running the workflow stage by stage or split by split (see README).


rule prompt_sets:
    input:
        get_all_prompt_shard_summaries,


rule sam_precompute:
    input:
        get_all_precompute_shard_summaries,


rule train:
    input:
        proj("checkpoints", "no_image", f"run_{RUN_ID}", "training_summary.json"),


rule sanity_check:
    input:
        proj("checkpoints", "no_image", f"run_{RUN_ID}", "sanity_check.json"),


rule sanity_panels:
    input:
        proj("reports", "debug_panels", "train_panels.json"),


for _split in SPLITS:

    rule:
        name:
            f"split_{_split}"
        input:
            proj("training_data", "no_image", f"{_split}.h5"),
