"""Neural → image alignment: image embeddings (`embed-images`), alignment examples from the token store,
projector training (symmetric InfoNCE) and retrieval evaluation."""
