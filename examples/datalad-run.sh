#!/bin/sh
# In a DataLad dataset: keep an image in it (JSON in git, layers in the annex) and
# run a command in that image, recorded by datalad containers-run.
#   IMAGE_REF=my-tools:latest examples/datalad-run.sh
set -eu
mkdir -p images
docker-dir-save --gitattributes "$IMAGE_REF" images/tools
datalad save -m "Add the tools image" images/tools
datalad containers-add tools -i images/tools --call-fmt 'docker-dir-exec {img} {cmd}'
datalad containers-run -n tools --input data.txt --output counts.txt "sh -c 'wc -w < data.txt > counts.txt'"
