"""The FedQuad client: plan application, saved-activation hooks, local training."""

from fedquad.plan import TrainOptions

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import BlockBytes, QuantSettings, SavedTensorPolicy
from fedquad.client.train import (LocalMetrics, LocalResult, LocalTrainConfig, StepMemory, forward_backward,
                                  train_local)

__all__ = ["BlockBytes", "LocalMetrics", "LocalResult", "LocalTrainConfig", "PlanRuntime", "QuantSettings",
           "SavedTensorPolicy", "StepMemory", "TrainOptions", "forward_backward", "train_local"]
