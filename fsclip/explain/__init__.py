"""``fsclip-explain``: the papers' analysis figures from a run folder or zero-shot CLIP.

One module per technique, each a subcommand of :mod:`fsclip.explain.cli`:

* ``attention``      the attention maps a method exposes (VT-CLIP, DPT, SAFE, CLIP);
* ``gradcam``        Smooth Grad-CAM++ of a class through the method's whole model;
* ``correspondence`` dense correspondence of a source point across two images (SAFE Figs. 3, 6);
* ``shapley``        Shapley values of image parts for the true class (SAFE Fig. 1).

Shared pieces: :mod:`fsclip.explain.source` (what is explained: subjects and images),
:mod:`fsclip.explain.panels` (figures and files, written atomically) and
:mod:`fsclip.explain.parts` (part masks). The package reads models only through public
hooks the trainers expose (``image_logits``, ``attention_maps``; see ``hooks.py``); trainers
and the engine import nothing from it. Importing this package imports nothing heavy.
"""
