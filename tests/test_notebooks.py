"""The notebooks: each runs top to bottom without an error cell and leaves no temporary files
behind; each is committed clean, titled by its number, carries its diagrams inline (an HTML
export shows them) and links the specifications it follows.

The diagrams' sources are ``notebooks/img/*.svg``; each is embedded in its notebook as a cell
attachment. After editing one: ``python tests/test_notebooks.py embed``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

NOTEBOOK_FOLDER = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_FOLDER.glob("*.ipynb"))
IMAGES = NOTEBOOK_FOLDER / "img"
IDS = [path.stem for path in NOTEBOOKS]

OB_DCR = "https://openbankinguk.github.io/dcr-docs-pub/"
RFC_URL = "https://www.rfc-editor.org/rfc/rfc{}"
SPECS_IN_REPOSITORY = "../docs/specs/"
WALKTHROUGH_URL = (
    "https://www.pingidentity.com/en/company/blog/posts/2018/"
    "enable-open-banking-dynamic-client-registration-with-ping-identity.html"
)
SVG_DATA_URI = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')
ATTACHMENT_LINK = re.compile(r"!\[[^\]]*\]\(attachment:([^)\s]+)\)")


def markdown(path: Path) -> list[str]:
    notebook = json.loads(path.read_text())
    cells = notebook["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]


def number_of(path: Path) -> int:
    return int(path.name[:2])


def test_there_are_notebooks():
    assert [path.name for path in NOTEBOOKS][:1] == ["01_walkthrough.ipynb"]
    assert [number_of(path) for path in NOTEBOOKS] == list(range(1, len(NOTEBOOKS) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == []
            assert cell.get("execution_count") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_and_removes_its_temporary_files(path, tmp_path):
    """Executed as by hand (no OBDCR_NOTEBOOK_WORKDIR), with a temporary directory of its own:
    nothing is left in it afterwards, the sandbox CA's private keys included."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    saved = {name: os.environ.get(name) for name in ("TMPDIR", "OBDCR_NOTEBOOK_WORKDIR")}
    os.environ["TMPDIR"] = str(temporary)  # the kernel's (and its servers') temporary folder
    os.environ.pop("OBDCR_NOTEBOOK_WORKDIR", None)
    try:
        client = NotebookClient(
            notebook,
            timeout=120,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    assert sorted(p.name for p in temporary.iterdir()) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_html_export_shows_the_diagrams(path):
    """`jupyter nbconvert --to html`: every diagram is inside the page (an SVG data URI), none
    is a link to a file next to the notebook."""
    import nbformat
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nbformat.read(path, as_version=4))
    svgs = [base64.b64decode(data) for data in SVG_DATA_URI.findall(html)]
    assert svgs, f"{path.name} has no diagram"
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert root.find("{http://www.w3.org/2000/svg}title") is not None  # its alt text
    assert not re.search(r'src="(?!data:|https?:)[^"]+\.svg"', html)
    assert "img/" not in " ".join(markdown(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_diagrams_are_the_sources_in_img(path):
    """Each attachment is one of notebooks/img/*.svg, byte for byte, and each is shown."""
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        attachments = cell.get("attachments", {})
        shown = ATTACHMENT_LINK.findall("".join(cell["source"]))
        assert sorted(shown) == sorted(attachments), "an attachment not shown, or missing"
        for name, bundle in attachments.items():
            assert base64.b64decode(bundle["image/svg+xml"]) == (IMAGES / name).read_bytes(), (
                f"{name} differs from notebooks/img/{name}: python tests/test_notebooks.py embed"
            )


def test_every_diagram_source_is_used():
    used = {
        name
        for path in NOTEBOOKS
        for text in markdown(path)
        for name in ATTACHMENT_LINK.findall(text)
    }
    assert used == {image.name for image in IMAGES.glob("*.svg")}


def test_the_pipeline_diagram_lists_the_policies_in_order():
    from flask_obdcr.policies import default_pipeline

    root = ET.parse(IMAGES / "registration-pipeline.svg").getroot()
    texts = [element.text for element in root.iter("{http://www.w3.org/2000/svg}text")]
    names = [policy.name for policy in default_pipeline()]
    assert [text for text in texts if text in names] == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_titles_are_numbered(path):
    """`# N. Title`, then `## N.1 ...`, `## N.2 ...` in order."""
    number = number_of(path)
    headings = [
        line for text in markdown(path) for line in text.splitlines() if re.match(r"#{1,2} ", line)
    ]
    assert re.fullmatch(rf"# {number}\. \S.*", headings[0]), headings[0]
    assert [line for line in headings if line.startswith("# ")] == headings[:1]
    sections = [line for line in headings if line.startswith("## ")]
    assert sections, "no sections"
    for index, line in enumerate(sections, 1):
        assert re.fullmatch(rf"## {number}\.{index} \S.*", line), line


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_specifications_are_linked(path):
    """The OB DCR specification, the copy in docs/specs/, and every RFC the text names."""
    text = "\n".join(markdown(path))
    assert f"]({OB_DCR})" in text
    assert f"]({SPECS_IN_REPOSITORY}" in text
    for number in set(re.findall(r"\bRFC (\d{4})\b", text)):
        assert f"({RFC_URL.format(number)})" in text, f"RFC {number} is not linked"


def test_the_core_specifications_are_linked_somewhere():
    text = "\n".join(t for path in NOTEBOOKS for t in markdown(path))
    for number in (7591, 8705, 7515, 7519, 9440):
        assert f"({RFC_URL.format(number)})" in text


def test_the_walkthrough_is_cited_with_its_link():
    text = "\n".join(markdown(NOTEBOOK_FOLDER / "02_registration_policy.ipynb"))
    assert "How to Enable Open Banking Dynamic Client Registration with Ping Identity" in text
    assert f"]({WALKTHROUGH_URL})" in text
    assert "27 March 2018" in text


def embed() -> None:
    """Put notebooks/img/*.svg into the notebooks' attachments, where they are shown."""
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            names = ATTACHMENT_LINK.findall("".join(cell["source"]))
            if names:
                cell["attachments"] = {
                    name: {"image/svg+xml": base64.b64encode((IMAGES / name).read_bytes()).decode()}
                    for name in names
                }
            else:
                cell.pop("attachments", None)
        text = json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        path.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] != ["embed"]:
        sys.exit("usage: python tests/test_notebooks.py embed")
    embed()
