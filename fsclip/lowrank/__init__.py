"""Weight-space adaptation of CLIP: low-rank updates of the encoders' weights (CLIP-LoRA)."""

from .lora import (LoRAMultiheadAttention, LoRAPair, apply_lora, count_lora_params, lora_modules,
                   lora_state_dict, merge_lora)

__all__ = ["LoRAMultiheadAttention", "LoRAPair", "apply_lora", "count_lora_params", "lora_modules",
           "lora_state_dict", "merge_lora"]
