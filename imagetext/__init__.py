"""Image–caption data shared by every stage: shapes, caption folders, webdataset shards, emoji."""

STAGES = ("vqgan", "gpt_prior", "clip_rerank")  # the stages that train a model (packaged configs, shipped models)
