"""Real-ESRGAN's second-order degradation (`--degradation realesrgan`): its settings,
blur kernels, a differentiable JPEG and the pipeline that makes a batch's inputs."""
