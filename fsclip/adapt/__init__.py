"""Mechanisms shared by frozen-backbone methods: the split of CLIP's image encoder into a
frozen trunk G and a pooling head, the on-disk feature cache, the validation-driven
hyperparameter search, and Tip-Adapter's cache-model logits."""
