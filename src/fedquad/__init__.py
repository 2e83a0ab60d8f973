"""fedquad: federated LoRA fine-tuning with per-device LoRA depth and quantized saved activations.

Implements FedQuad (Li, Liu, Xu, Huang, arXiv 2506.01001). Where the code fills in detail the
paper's abstract does not give, it follows the project's own design (docs/design.md).
"""

from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan

__all__ = ["ClientPlan", "FedquadError"]
__version__ = "0.1.0"
