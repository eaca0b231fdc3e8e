"""MLM pretraining stage: corpus → tokenizer → packed blocks → BertForMaskedLM → outputs/<run>/model."""
