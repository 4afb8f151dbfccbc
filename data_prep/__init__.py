"""Raw recommendation datasets -> TFRecord shards per split and domain + schema.json."""
