"""Semantic decoding of any stimulus-locked dataset: concepts, property ratings and image embeddings from responses."""
