"""How a world model is conditioned on the players' actions: one small module per mechanism.

The backbone (:class:`~actionparty.model.dit.WanDiT`) has one extension point, a
:class:`~actionparty.model.dit.DiTConditioning` per call; a conditioning module turns the call's
:class:`SubjectInputs` into one. Which module a variant gets is its file's ``conditioning.kind``
(params/variants/, :mod:`actionparty.variants`):

    subject   :class:`SubjectTokens` (subject_tokens.py), with the mechanisms of its own modules:
              state geometry and the own frame (state.py), the glimpse (glimpse.py), the state
              render (render.py), masked action cross-attention (mca.py)
    global    :class:`GlobalAction` (global_action.py)
    text      no module in the backbone: the prompt carries the actions (text_action.py)
    video     none (the exp-138 model)
"""

from __future__ import annotations

from actionparty.model.conditioning.global_action import GlobalAction
from actionparty.model.conditioning.inputs import NO_ACTION, CallLayout, SubjectInputs
from actionparty.model.conditioning.state import STATE_DIM, StateGrid, facing_of, to_own_frame, turn_to_canvas
from actionparty.model.conditioning.subject_tokens import SubjectTokens
from actionparty.model.conditioning.text_action import TextConditioner, action_prompt


def build_conditioning(variant_conditioning, dit, grid: StateGrid):
    """The backbone conditioning module of a variant's ``conditioning`` block (None: text, video)."""
    kind = variant_conditioning.kind
    if kind == "subject":
        return SubjectTokens(dit, variant_conditioning, grid)
    if kind == "global":
        return GlobalAction(dit)
    return None


__all__ = ["NO_ACTION", "STATE_DIM", "CallLayout", "GlobalAction", "StateGrid", "SubjectInputs", "SubjectTokens",
           "TextConditioner", "action_prompt", "build_conditioning", "facing_of", "to_own_frame", "turn_to_canvas"]
