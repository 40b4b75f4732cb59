"""The models a report shows: the variant registry (``params/variants/*.yaml``) as rows and lines.

Every table row and figure line comes from :func:`actionparty.variants.registry`, in its order
(role, source, experiment id); a new variant file is a new row and a new line, with no code
change here. Which rows each table holds:

    main       the paper's and our methods, the baselines and the references (copy floor, oracle)
    ablation   each method (role paper or ours) followed by the ablations that descend from it
               through ``ablation_of``; so is any other row that has ablations
    others     every row (per game, per player count, per cause, seeds)

The ground-truth row (the oracle) bounds every other row and does not compete for the best value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actionparty.variants import VARIANT_DIR, VariantConfig, registry

METHOD_ROLES = ("paper", "ours")
UNKNOWN_COLOUR = "tab:gray"  # a run the registry does not name (a seed run's own folder, say)


@dataclass(frozen=True)
class Lineup:
    """The registry's rows, in table order: name -> VariantConfig."""

    variants: dict[str, VariantConfig]

    @classmethod
    def from_registry(cls, directory: str | Path = VARIANT_DIR) -> "Lineup":
        return cls(registry(directory))

    def __contains__(self, name: str) -> bool:
        return name in self.variants

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.variants)

    def _with(self, keep) -> tuple[str, ...]:
        return tuple(name for name, v in self.variants.items() if keep(v))

    @property
    def trained(self) -> tuple[str, ...]:
        """The finetuned variants (they leave a train log)."""
        return self._with(lambda v: v.trained)

    @property
    def baselines(self) -> tuple[str, ...]:
        return self._with(lambda v: v.role == "baseline")

    @property
    def floors(self) -> tuple[str, ...]:
        """The copy-the-context rows."""
        return self._with(lambda v: v.source == "copy")

    @property
    def main(self) -> tuple[str, ...]:
        return self._with(lambda v: v.role != "ablation")

    @property
    def ablation(self) -> tuple[str, ...]:
        parents = {v.ablation_of for v in self.variants.values()}
        rows: list[str] = []
        for name, v in self.variants.items():
            if v.role != "ablation" and (v.role in METHOD_ROLES or name in parents):
                rows += [name, *self._descendants(name)]
        return tuple(rows)

    def _descendants(self, parent: str) -> list[str]:
        """Ablations of ``parent``, each followed by its own ablations (depth first, table order)."""
        out = []
        for name, v in self.variants.items():
            if v.ablation_of == parent:
                out += [name, *self._descendants(name)]
        return out

    def experiment(self, name: str) -> str:
        """The experiment id ('' for the references and for names the registry does not hold)."""
        v = self.variants.get(name)
        return (v.experiment or "") if v else ""

    def label(self, name: str) -> str:
        """'ActionParty+ (ours) (exp-139)'; a name the registry does not hold is its own label."""
        v = self.variants.get(name)
        if v is None:
            return name
        return f"{v.name} ({v.experiment})" if v.experiment else v.name

    def bounds(self, name: str) -> bool:
        """The ground-truth row: it bounds the others and does not compete."""
        v = self.variants.get(name)
        return v is not None and v.source == "ground_truth"

    def style(self, name: str) -> dict:
        """matplotlib line style: the variant's colour; methods bold, ablations dashed, the copy
        floor dotted, the oracle dash-dotted; grey for a name the registry does not hold."""
        v = self.variants.get(name)
        if v is None:
            return dict(color=UNKNOWN_COLOUR, linestyle="-", linewidth=1.3)
        linestyle = {"copy": ":", "ground_truth": "-."}.get(v.source, "--" if v.role == "ablation" else "-")
        return dict(color=v.colour, linestyle=linestyle, linewidth=2.4 if v.role in METHOD_ROLES else 1.3)
