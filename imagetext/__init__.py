"""Image–caption data shared by every stage: shapes, caption folders, webdataset shards, emoji."""
