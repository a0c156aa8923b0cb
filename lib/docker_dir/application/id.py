"""What docker-dir-id does: describe the selected image of a directory (its ID, or the
JSON summary), verifying it first when asked; no engine, no layer content needed.
json is imported for --json only: with re and enum it would double the plain run's time."""
from ..format.consistent import read_consistently
from ..fs import write_if_changed


def describe(path, repo_tag=None, config=None, platform=None, verify=False, as_json=False, output=None):
    """The text docker-dir-id prints for the image the selectors leave; with `output`, it
    is written to that file instead, atomically and only when it differs (the file's
    mtime then moves only when the image changed: Make's restat, Snakemake's triggers)."""
    def read(image_dir):
        image = image_dir.select(repo_tag=repo_tag, config=config, platform=platform)
        if verify:
            image.verify()
        if as_json:
            import json

            return json.dumps(image.summary(), indent=2) + "\n"
        return image.image_id() + "\n"

    text = read_consistently(path, read)
    if output is not None:
        write_if_changed(output, text)
    return text
