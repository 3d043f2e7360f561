"""Default configuration: Dassl's keys and default values (yacs).

Keys specific to Dassl's domain-adaptation / semi-supervised trainers (TRAINER.MCD, ...) are
not carried; every other key has Dassl's name and default. Methods add their own node under
``TRAINER`` through their trainer's ``extend_cfg`` hook.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

_C = CN()
_C.VERSION = 1
# Directory to save the output files (log.txt, checkpoints)
_C.OUTPUT_DIR = "./output"
# Path to a directory where the files were saved previously (resume)
_C.RESUME = ""
# Negative: random; non-negative: fixed seed
_C.SEED = -1
_C.USE_CUDA = True
# Print detailed information (trainer, dataset, backbone)
_C.VERBOSE = True

# ---------------------------------------------------------------- Input
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
# Interpolation of resize functions: bilinear, bicubic or nearest
_C.INPUT.INTERPOLATION = "bilinear"
# Names of transforms, see fsclip/engine/data/transforms.py
_C.INPUT.TRANSFORMS = ()
# If True, tfm_train and tfm_test are None
_C.INPUT.NO_TRANSFORM = False
# Mean and std (default: ImageNet; CLIP configs override them)
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
# Random crop padding
_C.INPUT.CROP_PADDING = 4
# Random resized crop scale range
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
# Cutout
_C.INPUT.CUTOUT_N = 1
_C.INPUT.CUTOUT_LEN = 16
# Gaussian noise
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
# RandAugment
_C.INPUT.RANDAUGMENT_N = 2
_C.INPUT.RANDAUGMENT_M = 10
# ColorJitter (brightness, contrast, saturation, hue)
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
# Random gray scale probability
_C.INPUT.RGS_P = 0.2
# Gaussian blur: probability and kernel size (odd)
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

# ---------------------------------------------------------------- Dataset
_C.DATASET = CN()
# Folder that holds every dataset folder (imagenet/, caltech-101/, ...)
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
# Source/target domain names (DA/DG datasets only)
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
# Number of labelled instances in total (semi-supervised learning)
_C.DATASET.NUM_LABELED = -1
# Number of images per class (few-shot); -1 means all
_C.DATASET.NUM_SHOTS = -1
# Percentage of validation data (semi-supervised datasets only)
_C.DATASET.VAL_PERCENT = 0.1
_C.DATASET.STL10_FOLD = -1
_C.DATASET.CIFAR_C_TYPE = ""
_C.DATASET.CIFAR_C_LEVEL = 1
_C.DATASET.ALL_AS_UNLABELED = False
# CoCoOp base-to-new: all, base or new
_C.DATASET.SUBSAMPLE_CLASSES = "all"

# ---------------------------------------------------------------- Dataloader
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Apply the training transform K times to each image
_C.DATALOADER.K_TRANSFORMS = 1
# Also return the un-augmented image as img0
_C.DATALOADER.RETURN_IMG0 = False
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# RandomDomainSampler: number of domains per batch (0 or -1: all)
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
# RandomClassSampler: instances per class
_C.DATALOADER.TRAIN_X.N_INS = 16
_C.DATALOADER.TRAIN_U = CN()
# False to give train_u its own loader parameters
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32

# ---------------------------------------------------------------- Model
_C.MODEL = CN()
# Path to model weights for initialization
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
# CLIP trainers: RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, ViT-L/14,
# a micro-CLIP of the offline kit, or a path to a local file
_C.MODEL.BACKBONE.NAME = ""
_C.MODEL.BACKBONE.PRETRAINED = True
# Folder searched for CLIP weights by name (empty: ~/.cache/clip, like clip.load)
_C.MODEL.BACKBONE.CACHE_DIR = ""
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
# Hidden layers of the head, e.g. [512, 512]
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

# ---------------------------------------------------------------- Optimization
_C.OPTIM = CN()
# sgd, adam, adamw, amsgrad, rmsprop
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.RMSPROP_ALPHA = 0.99
# Also used by other adaptive optimizers such as adamw
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
# Different LR for new layers (NEW_LAYERS) and the rest (LR * BASE_LR_MULT)
_C.OPTIM.STAGED_LR = False
_C.OPTIM.NEW_LAYERS = ()
_C.OPTIM.BASE_LR_MULT = 0.1
# single_step, multi_step or cosine
_C.OPTIM.LR_SCHEDULER = "single_step"
# -1 or 0: the step size equals MAX_EPOCH
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
# > 0 activates warmup for that many epochs
_C.OPTIM.WARMUP_EPOCH = -1
# linear or constant
_C.OPTIM.WARMUP_TYPE = "linear"
# LR during a constant warmup
_C.OPTIM.WARMUP_CONS_LR = 1e-5
# Start LR of a linear warmup
_C.OPTIM.WARMUP_MIN_LR = 1e-5
# True: the scheduler after warmup starts counting from 0 (last_epoch=-1)
_C.OPTIM.WARMUP_RECOUNT = True

# ---------------------------------------------------------------- Train
_C.TRAIN = CN()
# Save a checkpoint every N epochs (0 or negative: only the last)
_C.TRAIN.CHECKPOINT_FREQ = 0
# Print a train line every N batches
_C.TRAIN.PRINT_FREQ = 10
# train_x, train_u or smaller_one (DA/SSL)
_C.TRAIN.COUNT_ITER = "train_x"

# ---------------------------------------------------------------- Test
_C.TEST = CN()
_C.TEST.EVALUATOR = "Classification"
_C.TEST.PER_CLASS_RESULT = False
# Save a confusion matrix to OUTPUT_DIR/cmat.pt
_C.TEST.COMPUTE_CMAT = False
_C.TEST.NO_TEST = False
# Split used by test(): test or val
_C.TEST.SPLIT = "test"
# Model to test after training: last_step or best_val
_C.TEST.FINAL_MODEL = "last_step"

# ---------------------------------------------------------------- Trainer
_C.TRAINER = CN()
_C.TRAINER.NAME = ""


def get_cfg_default() -> CN:
    """A fresh, mutable copy of the default configuration."""
    return _C.clone()
