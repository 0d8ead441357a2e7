"""Biomed-DPT: dual-modality prompt tuning for BiomedCLIP, as a library and a CLI.

Main entry points (import them from their modules, so that importing the
package stays cheap):

- ``backbone.load_backbone(spec)``      the frozen BiomedCLIP (or ``tiny``) backbone
- ``model.BiomedDPT``                   prompted image encoder + prompt learner
- ``workflow.setup_classes`` / ``workflow.train_prompts`` / ``workflow.save_trained``
- ``predictor.Predictor``               predictions with per-prompt contributions
- ``checkpoint.load_checkpoint``        folders, ``hf-hub:`` ids, Dassl ``.pth.tar`` (safe import)
- ``ckpt_config.CheckpointConfig``      the checkpoint's config.json as one frozen dataclass
- ``runs.run_training`` / ``sweep.run_sweep``   one paper-protocol run / the grid of them on Ray
- ``results.aggregate`` / ``publish.publish``   the paper's tables / the zoo on the Hub + registry
- ``explain.gradcam`` / ``explain.attention_rollout``   model-attention maps
- ``python -m dpt_core --help``         the command line
"""

__version__ = "0.1.0"
