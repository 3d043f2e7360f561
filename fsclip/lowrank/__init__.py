"""Weight-space adaptation of CLIP: low-rank updates (CLIP-LoRA) and singular-value tuning
(CLIP-SVD) of the encoders' weights; ``fsclip.lowrank.trainer`` is their shared training loop."""

from .lora import (LoRAMultiheadAttention, LoRAPair, apply_lora, count_lora_params, lora_modules,
                   lora_state_dict, merge_lora)
from .svd import (SingularValues, SVDLinear, SVDMultiheadAttention, apply_svd, count_svd_params, merge_svd,
                  svd_modules, svd_state_dict, weight_matrices)
from .svd_cache import svd_factors

__all__ = ["LoRAMultiheadAttention", "LoRAPair", "apply_lora", "count_lora_params", "lora_modules",
           "lora_state_dict", "merge_lora", "SingularValues", "SVDLinear", "SVDMultiheadAttention", "apply_svd",
           "count_svd_params", "merge_svd", "svd_modules", "svd_state_dict", "weight_matrices", "svd_factors"]
