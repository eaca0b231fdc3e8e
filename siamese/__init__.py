"""Stage 2: fine-tune the pretrained BERT as a Siamese (bi-encoder) sentence encoder on NLI."""
