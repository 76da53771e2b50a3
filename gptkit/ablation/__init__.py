"""Ablations: one base recipe, some fields varied, several seeds; a table with confidence intervals."""

from .report import mean_ci, t_quantile
from .runner import ablation_dir, run_ablation
from .spec import Ablation, load_ablation, plan

__all__ = ["Ablation", "ablation_dir", "load_ablation", "mean_ci", "plan", "run_ablation", "t_quantile"]
