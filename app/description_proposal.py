"""Generated or retrieved descriptions are a proposal: shown first, put in the table only on accept.

"Generate descriptions" fills the one-class text box and leaves the class table as it
is; the user reads (and may edit) the proposal and accepts it with "Apply to the
table". A retrieved proposal may describe a *different* class than the one asked
for (the nearest shipped class), so it must never replace descriptions unseen.
"""
from __future__ import annotations

from dpt_core.describe import GenerationResult

from . import formatting as fmt

ACCEPT_LABEL = "Apply to the table"  # the button that accepts a proposal


def proposal_view(class_name: str, result: GenerationResult) -> tuple[str, str]:
    """(text for the one-class box, note) for a proposal; the class table stays unchanged."""
    note = (f"**Proposal** of {len(result.sentences)} sentences for **{fmt.escape(class_name)}**: "
            f"{fmt.escape(result.note)} The class table is unchanged until you press "
            f"**{ACCEPT_LABEL}**.")
    return "\n".join(result.sentences), note
