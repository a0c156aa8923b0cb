"""Choosing one image of an image directory: by tag, by config digest prefix, by platform."""
from ..errors import ContentMissing, SelectionError
from .annex import GET_CONTENT_HINT
from .names import shown
from .platform import Platform


def select_among(image_dir, candidates, selectors):
    """select(), among `candidates` (some of the directory's images); `selectors` has
    repo_tag, config and platform attributes."""
    return select(image_dir, selectors.repo_tag, selectors.config, selectors.platform, candidates)


def select(image_dir, repo_tag=None, config=None, platform=None, candidates=None):
    """The one image the selectors leave. Several images differing only in platform
    (a multi-platform index) leave the one of `platform` (a string os/arch[/variant]),
    by default this host's."""
    images = image_dir.images()
    chosen = images if candidates is None else candidates
    path = image_dir.path
    if repo_tag is not None:
        if any(not i.has_manifest() for i in chosen):
            raise ContentMissing(f"{path}: the manifest is not present, so --repo-tag cannot be "
                                 "matched; " + GET_CONTENT_HINT.format(d=path) + ", or use --config")
        chosen = [i for i in chosen if i.matches_tag(repo_tag)]
    if config is not None:
        chosen = [i for i in chosen if i.matches_config(config)]
    if platform is not None or len(chosen) > 1 and all(i.platform for i in chosen):
        chosen = matching_platform(path, chosen, platform, lambda i: i.platform or i.platform_of_config())
    if len(chosen) == 1:
        return chosen[0]
    candidates = "; ".join(i.label() for i in images)
    if not chosen:
        wanted = " and ".join(shown(s) for s in (repo_tag and f"--repo-tag {repo_tag}",
                                                 config and f"--config {config}") if s)
        raise SelectionError(f"{path}: no image matches {wanted}; it holds: {candidates}")
    if any(not i.has_manifest() for i in chosen):
        raise SelectionError(f"{path}: the manifest is not present and {len(chosen)} configs are: "
                             f"{'; '.join(i.label() for i in chosen)}; choose one with --config, or "
                             + GET_CONTENT_HINT.format(d=path))
    raise SelectionError(f"{path}: holds {len(chosen)} images, choose one with --repo-tag or "
                         f"--config: {'; '.join(i.label() for i in chosen)}")


def matching_platform(where, candidates, wanted, platform_of, verb="holds"):
    """The candidates whose platform (platform_of(candidate), a Platform or None) satisfies
    `wanted` (os/arch[/variant]; None: this host's); SelectionError when none does. The
    one rule of choosing by platform: a directory's images, a registry's index (where
    several remain, the caller refuses too, naming how to choose one)."""
    request = Platform.parse(wanted) if wanted is not None else Platform.host()
    offered = [(candidate, platform_of(candidate)) for candidate in candidates]
    matching = [candidate for candidate, offer in offered if offer and request.matches(offer)]
    if not matching and candidates:
        have = ", ".join(sorted({str(offer) for _, offer in offered if offer})) or "no platform named"
        how = "" if wanted else " (this host's); choose one with --platform"
        raise SelectionError(f"{where}: no image for platform {request}{how}; it {verb}: {have}")
    return matching
