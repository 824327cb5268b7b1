"""autodeploy: model + cluster + SLA in, a measured Dynamo/TensorRT-LLM deployment out."""

__version__ = "0.1.0"
