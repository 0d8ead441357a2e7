"""The demo's page (notice, banner, tabs) and the command line that launches it with privacy defaults.

``build_demo`` builds no model: the backbone loads lazily in ``Services`` (``main``
loads it before launching, so the first visitor does not wait and a fallback
banner is known up front).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Sequence

import gradio as gr

from dpt_core.backbone import DEFAULT_BACKBONE, BackboneError
from dpt_core.reachability import work_offline_if_unreachable

from . import cleanup
from . import formatting as fmt
from .choices import checkpoint_choices
from .examples import EXAMPLES_DIR
from .fewshot.layout import create_fewshot_tab
from .predict.layout import create_predict_tab
from .services import Services
from .session import cleanup_session_state, end_session, start_session

log = logging.getLogger(__name__)

QUEUE_CONCURRENCY = 2  # events without a limit of their own: at most 2 at a time (tests and load test alike)

TITLE = "Biomed-DPT: prompt-tuned BiomedCLIP demo"
# Every CACHE_LIFETIME[0] s, Gradio deletes the files (uploads, outputs) older than CACHE_LIFETIME[1] s.
CACHE_LIFETIME = (600, 1800)
MAX_FILE_SIZE = "100mb"

NOTICE_HTML = (
    '<div role="note" style="border:2px solid #b91c1c;border-radius:8px;padding:8px 12px;'
    'background:#fef2f2;color:#7f1d1d;font-weight:600">'
    "Research demo — not a medical device, not for diagnosis. "
    '<span style="font-weight:400">Outputs are scores of a vision-language model, not findings. '
    "Uploads stay in this server's temporary cache for at most 30 minutes and are not used for anything else; "
    "do not upload images that identify a patient.</span></div>"
)


def banner_html(services: Services) -> str:
    """The persistent warning banner (random weights, fallback backbone), or nothing."""
    text = services.banner
    if not text:
        return ""
    return ('<div role="alert" style="border:2px solid #b45309;border-radius:8px;padding:8px 12px;'
            f'background:#fffbeb;color:#78350f;font-weight:600">⚠️ {fmt.escape(text)}</div>')


def build_demo(services: Services) -> gr.Blocks:
    """The whole page: notice, banner, Predict and Few-shot tabs sharing one session state."""
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=CACHE_LIFETIME) as demo:
        gr.Markdown(f"## {TITLE}")
        gr.HTML(NOTICE_HTML, elem_id="notice")
        gr.HTML(banner_html(services), elem_id="banner")  # the backbone is loaded once: the banner is fixed
        # Filled on page load by a private event: a callable State value would become a public
        # /new_session_state endpoint that hands out server paths.
        session = gr.State(None, delete_callback=cleanup_session_state)
        demo.load(_start_session, None, session, api_visibility="private")
        with gr.Tabs() as tabs:
            with gr.Tab("Predict", id="predict") as predict_tab:
                handles = create_predict_tab(services, session)
            with gr.Tab("Few-shot adaptation", id="fewshot"):
                create_fewshot_tab(services, session, handles, tabs)
        # Checkpoints trained on the other tab appear when coming back (choices only; the value stays).
        predict_tab.select(lambda p, s: gr.update(choices=checkpoint_choices(p, s)),
                           [handles.preset, session], [handles.checkpoint], api_visibility="private")
        demo.unload(_end_session)
    return demo


def _start_session(request: gr.Request) -> dict:
    return start_session(getattr(request, "session_hash", None))


def _end_session(request: gr.Request) -> None:
    """Delete the session folder as soon as the tab closes (the State's delete callback runs
    up to an hour later; it and the exit handler remain as fallbacks)."""
    end_session(getattr(request, "session_hash", None))


# Table headers break between words, not inside them (at every width). Phone widths: class names wrap instead of
# being cut (Gradio's table cells are divs in a virtual table, so the first column is
# ``.first-column``); the tables' text is a size smaller; the scan's label keeps clear of the
# clear (×) button in the top right corner.
NARROW_CSS = """
#sources-table th *, #contrib-table th * { word-break: normal !important; overflow-wrap: normal !important; }
@media (max-width: 640px) {
  #class-table *, #sources-table *, #contrib-table * { font-size: 13px !important; }
  #class-table .first-column, #class-table .first-column * {
    white-space: normal !important; text-overflow: clip !important; overflow-wrap: anywhere !important;
    height: auto !important; }
  #scan-file label[data-testid="block-label"] { max-width: calc(100% - 3rem) !important; }
}
"""

def launch_options() -> dict[str, Any]:
    """Privacy defaults for ``launch``: no run history, no share link, bounded uploads."""
    return {
        "run_history": False,
        "share": False,
        "show_error": False,  # unexpected errors show a generic message; ours are gr.Error anyway
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [str(EXAMPLES_DIR)],  # the examples gallery serves these files
        "footer_links": ["api", "gradio", "settings"],
        "css": NARROW_CSS,
    }


def needs_hub(spec: str | None) -> bool:
    """Whether the backbone to load comes from the Hub (the default does)."""
    spec = spec or os.environ.get("DPT_BACKBONE") or DEFAULT_BACKBONE
    return spec.startswith("hf-hub:")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=TITLE)
    p.add_argument("--backbone", default=None,
                   help="backbone spec: hf-hub:ORG/REPO, local-dir:PATH or tiny "
                        "(default: $DPT_BACKBONE, else BiomedCLIP from the Hub)")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when present, else CPU)")
    p.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: $GRADIO_SERVER_PORT, else 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--allow-local-checkpoints", action="store_true",
                   help="let users type local checkpoint folders (only for a private, local deployment)")
    p.add_argument("--log-level", default=os.environ.get("DPT_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_FLAGGING_MODE", "never")  # Blocks do not flag; belt and braces
    cleanup.prepare(retention_s=CACHE_LIFETIME[1])  # sweep what killed runs left, own the uploads, handle SIGTERM
    cleanup.start_import_sweeper(*CACHE_LIFETIME)  # extracted zip images go on Gradio's schedule too
    if args.allow_local_checkpoints:
        from .choices import ALLOW_LOCAL_ENV

        os.environ[ALLOW_LOCAL_ENV] = "1"
    # huggingface_hub logs through its own handler; propagating to ours would print every line twice.
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.disable_propagation()
    if needs_hub(args.backbone) and work_offline_if_unreachable():
        log.warning("The Hugging Face Hub cannot be reached: working offline (models from the local cache only).")
    services = Services(args.backbone, device=args.device)
    try:
        backbone = services.backbone  # load now: the first visitor should not wait, the banner is known
    except BackboneError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    log.info("backbone %s on %s", backbone.spec, backbone.device)
    if services.banner:
        log.warning("%s", services.banner)
    demo = build_demo(services)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY)
    options = launch_options()
    options["share"] = bool(args.share)
    demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(), **options)
