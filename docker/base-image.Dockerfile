# The container's base image, named once for Dependabot (.github/dependabot.yml, ecosystem docker).
# BentoML writes the real Dockerfile from bentofile.yaml (docker.distro, docker.python_version);
# scripts/build-image.sh stops when its FROM differs from this one, so a Dependabot bump of this
# line is a reminder to change bentofile.yaml to match, never a silent drift.
FROM python:3.11-slim
