# syntax=docker/dockerfile:1
# The model repository as an image: an init container copies it into the Triton pod's emptyDir
# (k8s/base/triton/deployment.yaml), so Triton (the NGC image, not ours) serves it unchanged.
#   docker build -f docker/models.Dockerfile -t codedserve/models:0.1.0 model_repository
# The build context is model_repository/ itself: every <model>/config.pbtxt, configs/gpu.pbtxt, 1/model.onnx.
FROM busybox:1.37.0
COPY --chown=10001:10001 . /model_repository
USER 10001:10001
ENTRYPOINT ["cp", "-a", "/model_repository/.", "/models/"]
