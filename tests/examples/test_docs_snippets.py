"""The docs' code: every ```python block of a page runs, in order, as one script; the API page names every public name."""
import re
from pathlib import Path

import pytest

import bilevel

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Pages whose snippets need an environment a test cannot provide; keep this list short and say why.
NOT_RUNNABLE = {"scaling.md": "its snippets start a torch.distributed process group under torchrun",
                "autolora.md": "its snippets need a model, data files and minutes of training; tests/autolora runs the "
                               "same pipeline on tiny models"}
PAGES = sorted(path.name for path in DOCS.glob("*.md"))


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


@pytest.fixture
def restore_method_registry():
    """Snippets may register example methods; keep them out of the registry other tests iterate over."""
    registry = bilevel.methods.base._REGISTRY
    saved = dict(registry)
    yield
    registry.clear()
    registry.update(saved)


@pytest.mark.parametrize("page", PAGES)
def test_python_snippets_run(page, restore_method_registry):
    if page in NOT_RUNNABLE:
        pytest.skip(NOT_RUNNABLE[page])
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page} has no python snippets")
    exec(compile("\n".join(blocks), str(DOCS / page), "exec"), {"__name__": f"docs_{page[:-3]}"})


def test_api_page_names_every_public_name():
    text = (DOCS / "api.md").read_text()
    public = [f"bilevel.{name}" for name in bilevel.__all__]
    public += bilevel.methods.__all__ + bilevel.solvers.__all__
    missing = [name for name in public if not re.search(rf"(?<![\w.]){re.escape(name)}\b|\.{re.escape(name)}\b", text)]
    assert not missing, f"docs/api.md does not document {missing}"


def test_mkdocs_nav_lists_every_page():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    assert [page for page in PAGES if page not in nav] == []


def test_readme_snippets_run():
    readme = (DOCS.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    exec(compile("\n".join(blocks), "README.md", "exec"), {"__name__": "readme"})


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_reach_a_file_and_a_heading():
    """Every relative link of the README and the docs names a file that exists (./ and ../ forms included) and, with
    an anchor into a page, one of that page's headings."""
    paths = [*DOCS.glob("*.md"), DOCS.parent / "README.md"]
    anchors = {path.resolve(): {slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)} for path in paths}
    broken = []
    for path in paths:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path.resolve()
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors.get(linked, set()):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken
