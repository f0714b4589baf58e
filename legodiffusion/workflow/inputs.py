"""What every family's graph begins with alike: its builder and model slots, the request inputs
all families share (prompt, seed, size, LoRAs) and the prompt's optional template."""

from __future__ import annotations

from legodiffusion.workflow.builder import InputHandle, Ref, WorkflowBuilder


def begin(name: str, model: str, controlnets: tuple[str, ...] = ()) -> tuple[WorkflowBuilder, InputHandle]:
    """A builder whose model slots are ``base`` and ``cn0``, ``cn1``, ... (the ControlNets), and its
    ``prompt`` input."""
    wf = WorkflowBuilder(name, models={"base": model, **{f"cn{i}": cn for i, cn in enumerate(controlnets)}})
    return wf, wf.input("prompt", "text", doc="what to draw")


def check_variant(controlnets: tuple[str, ...], edit: bool, stage: bool) -> None:
    """The combinations of ControlNets, an edit and a second stage the graphs support."""
    if len(controlnets) > 3:
        raise ValueError("at most 3 ControlNets per workflow")
    if (edit or stage) and controlnets:
        raise ValueError("image-to-image and two-stage workflows take no ControlNets yet")
    if edit and stage:
        raise ValueError("a two-stage workflow starts from noise")


def seed_input(wf: WorkflowBuilder) -> InputHandle:
    return wf.input("seed", "int", default=0, doc="0 <= seed < 2**64; seeds torch.Generator('cpu') exactly as diffusers does")


def size_inputs(wf: WorkflowBuilder, rule: str) -> tuple[InputHandle, InputHandle]:
    """``height`` and ``width`` in pixels, both following ``rule`` (their multiple and default)."""
    return wf.input("height", "int", default=None, doc=f"pixels, {rule}"), wf.input("width", "int", default=None, doc=f"pixels, {rule}")


def lora_inputs(wf: WorkflowBuilder) -> dict:
    return {
        "loras": wf.input("loras", "text", default="", doc="LoRA patch set on the shared base model: NAME[:WEIGHT],..."),
        "lora_k": wf.input("lora_k", "int", default=0, doc="a LoRA still loading is applied from this step at the latest; 0 waits for it"),
    }


def prompt_text(wf: WorkflowBuilder, prompt: InputHandle, template: str | None) -> Ref:
    """The text the encoder reads: the prompt, or the prompt set into the workflow's ``template``."""
    return prompt if template is None else wf.call("format_text", template=template, text=prompt).text
