"""Ray Data pre-embedding, Ray Train training, evaluation, corpus synthesis and storage."""
