"""A Dassl-compatible training engine (registries, config, data, trainer loop, checkpoints).

It knows nothing about methods. Names are imported lazily so that ``import fsclip.engine``
stays cheap; ``from fsclip.engine import TrainerX`` works as usual.
"""

from fsclip._lazy import lazy_getattr

_EXPORTS = {
    # registry
    "Registry": "registry", "TRAINER_REGISTRY": "registry", "DATASET_REGISTRY": "registry",
    "EVALUATOR_REGISTRY": "registry", "build_trainer": "registry", "build_dataset": "registry",
    "build_evaluator": "registry", "check_availability": "registry",
    # config
    "get_cfg_default": "config",
    # data
    "Datum": "data.base", "DatasetBase": "data.base", "sample_fewshot": "data.base",
    "load_or_create_fewshot": "data.base", "subsample_classes": "data.base",
    "DataManager": "data.manager", "DatasetWrapper": "data.manager",
    "build_data_loader": "data.manager", "build_transform": "data.transforms",
    "read_image": "data.images", "ImageReadError": "data.images",
    # optim
    "build_optimizer": "optim", "build_lr_scheduler": "optim",
    # evaluation
    "Classification": "evaluator", "EvaluatorBase": "evaluator",
    # checkpoints
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "resume_from_checkpoint": "checkpoint", "load_pretrained_weights": "checkpoint",
    # logging and utils
    "setup_logger": "logger", "collect_env_info": "logger",
    "set_random_seed": "utils", "mkdir_if_missing": "utils", "count_num_param": "utils",
    "AverageMeter": "utils", "MetricMeter": "utils",
    # trainers
    "TrainerBase": "trainer", "SimpleTrainer": "trainer", "TrainerX": "trainer",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
