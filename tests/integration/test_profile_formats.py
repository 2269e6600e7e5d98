"""Every format of ``aiobpf profile`` read back by a real consumer (issue 15):

- pprof: decoded by ``protoc`` with pprof's own ``profile.proto`` (Debian's
  golang-github-google-pprof-dev) and every sample rebuilt, and read by ``go tool pprof``;
- speedscope: validated against the schema speedscope publishes in its npm package
  (cached by scripts/provision.sh);
- HTML: opened in headless Chromium (Debian's), its DOM read and a screenshot taken,
  kept with the page under ``test-artifacts/profile-formats/`` at the repository's root
  (or ``$AIOBPF_TEST_ARTIFACTS/profile-formats/``);
- collapsed: exact lines in tests/unit/test_profile.py, the real target's in
  test_profile.py.

Each on a profile built here with known stacks (every sample checked exactly) and on a
real wall profile of the gh-135371 example (sid-3.14), whose stacks are known too.  A
missing consumer fails the test: provisioning installs them all.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from aiobpf.exporters.profile import html, pprof, speedscope
from aiobpf.exporters.profile.profile import Profile
from aiobpf.exporters.profile.stacks import Node
from tests.conftest import aiobpf, run_target
from tests.integration.test_profile import EXPECTED, _samples
from tests.pythons import by_label

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AIOBPF_TEST_ARTIFACTS", REPO / "test-artifacts")) \
    / "profile-formats"
PROFILE_PROTO = Path("/usr/share/gocode/src/github.com/google/pprof/proto/profile.proto")
SPEEDSCOPE_SCHEMA = Path(os.environ.get("AIOBPF_SPEEDSCOPE_DIR", "/var/cache/aiobpf/speedscope")
                         ) / "file-format-schema.json"
PROVISION = "scripts/provision.sh installs it"

# -- the profiles ---------------------------------------------------------------------------
MAIN = (Node("task", "main"), Node("frame", "main", "/app/main.py", 12))
WORKER = (*MAIN, Node("task", "worker-1"), Node("frame", "Worker.run", "/app/work.py", 30))
ODD = "naïve;name\n\"q\" </script><b>&amp;"     # what a target may call a task
KNOWN: dict[tuple[Node, ...], int] = {
    (*WORKER, Node("frame", "spin", "/app/work.py", 41)): 30,
    # the same function at another line: another location, the same function
    (*MAIN, Node("task", "worker-1"), Node("frame", "Worker.run", "/app/work.py", 33)): 10,
    (*MAIN, Node("task", ODD), Node("frame", "Handler.wait", "/app/h.py", 7)): 4,
    (Node("thread", "thread 4242"),
     Node("frame", "select", "/usr/lib/python3.14/selectors.py", 452)): 5,
}
TOTAL = sum(KNOWN.values())
PERIOD_NS = 100_000_000            # 10 samples in 0.9 s: 10 Hz


def synthetic() -> Profile:
    profile = Profile(4242, "wall", 10.0, samples=10, duration_s=0.9)
    for stack, count in KNOWN.items():
        profile.add(stack, count)
    return profile


def _label(node: Node) -> str:
    """How every format names a node: a task ``[task] name``, a thread ``[thread N]``,
    a frame ``qualname (file:line)``."""
    if node.kind == "frame":
        return f"{node.name} ({node.filename}:{node.line})"
    return f"[task] {node.name}" if node.kind == "task" else f"[{node.name}]"


def _names(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Labels as test_profile.EXPECTED names them: frames by qualname alone."""
    return tuple(label if label.startswith("[") else label.rsplit(" (", 1)[0]
                 for label in labels)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """A wall profile of the gh-135371 example in each file format: suffix -> (file,
    samples taken)."""
    out = tmp_path_factory.mktemp("seed")
    files = {}
    with run_target(by_label("sid-3.14"), "seed_app.py") as target:
        for suffix in (".pb.gz", ".json", ".html"):
            path = out / f"seed{suffix}"
            result = aiobpf("profile", str(target.pid), "--mode", "wall", "--duration", "0.5",
                            "-o", str(path))
            assert result.returncode == 0, result.stderr
            files[suffix] = (path, _samples(result.stderr))
    return files


def _expected_seed(samples: int) -> Counter[tuple[str, ...]]:
    return Counter({stack: n * samples for stack, n in EXPECTED.items()})


# -- pprof ----------------------------------------------------------------------------------
Message = dict[str, list[Any]]
ESCAPE = re.compile(r"\\([0-7]{1,3}|x[0-9a-fA-F]{1,2}|.)")
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(body: str) -> str:
    """A text-format string's body (C escapes, octal for the bytes of UTF-8) as text."""
    def one(found: re.Match[str]) -> str:
        code = found.group(1)
        if code[0] in "01234567":
            return chr(int(code, 8))
        if code[0] == "x":
            return chr(int(code[1:], 16))
        return SIMPLE_ESCAPES.get(code, code)
    return ESCAPE.sub(one, body).encode("latin-1").decode("utf-8")


def _text_format(text: str) -> Message:
    """protoc's text format (a field a line: ``name: value`` or ``name {`` ... ``}``) as
    ``{field: [values]}``, messages nested, strings as text, numbers as int."""
    root: Message = {}
    open_messages = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if line == "}":
            open_messages.pop()
            assert open_messages, text
        elif line.endswith(" {"):
            child: Message = {}
            open_messages[-1].setdefault(line[:-2], []).append(child)
            open_messages.append(child)
        elif line:
            name, value = line.split(": ", 1)
            assert not name.isdigit(), f"field {name}: not in profile.proto, or not of its type"
            parsed = _unescape(value[1:-1]) if value.startswith('"') else int(value)
            open_messages[-1].setdefault(name, []).append(parsed)
    assert open_messages == [root], text
    return root


def _one(message: Message, name: str) -> Any:
    """A singular field (proto3 leaves out zeros: 0 then)."""
    values = message.get(name, [0])
    assert len(values) == 1, (name, message)
    return values[0]


def _protoc(pb_gz: bytes) -> Message:
    protoc = shutil.which("protoc")
    assert protoc, f"protoc (Debian's protobuf-compiler) decodes the pprof files: {PROVISION}"
    assert PROFILE_PROTO.is_file(), \
        f"{PROFILE_PROTO} (Debian's golang-github-google-pprof-dev) is missing: {PROVISION}"
    out = subprocess.run([protoc, "--decode=perftools.profiles.Profile",
                          f"-I{PROFILE_PROTO.parent}", PROFILE_PROTO.name],
                         input=gzip.decompress(pb_gz), capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return _text_format(out.stdout.decode("utf-8"))


Frame3 = tuple[str, str, int]      # function name, file name, line


def _pprof_samples(profile: Message) -> list[tuple[tuple[Frame3, ...], list[int]]]:
    """Every sample: its stack root first (location -> its lines in order -> function ->
    string table) and its values."""
    strings = profile["string_table"]
    assert strings[0] == ""
    functions = {_one(f, "id"): f for f in profile["function"]}
    locations = {_one(loc, "id"): loc for loc in profile["location"]}
    out = []
    for sample in profile["sample"]:
        frames = []
        for location in sample["location_id"]:        # leaf first
            for line in locations[location]["line"]:   # inlined first, caller last
                function = functions[_one(line, "function_id")]
                frames.append((strings[_one(function, "name")],
                               strings[_one(function, "filename")], _one(line, "line")))
        out.append((tuple(reversed(frames)), sample["value"]))
    return out


def _value_types(profile: Message, field: str) -> list[tuple[str, str]]:
    strings = profile["string_table"]
    return [(strings[_one(t, "type")], strings[_one(t, "unit")]) for t in profile[field]]


def _as_pprof(node: Node) -> Frame3:
    if node.kind == "frame":
        return (node.name, node.filename, node.line)
    return (_label(node), f"<{node.kind}>", 0)


def test_pprof_every_sample_decoded_with_pprofs_own_proto() -> None:
    """Built here: every sample's stack (function, file and line of each location, root
    to leaf) and its values, exactly; the value types and the period."""
    decoded = _protoc(pprof.render(synthetic()))
    samples = _pprof_samples(decoded)
    expected = [(tuple(map(_as_pprof, stack)), [count, count * PERIOD_NS])
                for stack, count in KNOWN.items()]
    assert sorted(samples) == sorted(expected)
    assert _value_types(decoded, "sample_type") == [("samples", "count"),
                                                   ("wall", "nanoseconds")]
    assert _value_types(decoded, "period_type") == [("wall", "nanoseconds")]
    assert decoded["period"] == [PERIOD_NS] and decoded["duration_nanos"] == [900_000_000]
    # one function per (name, file): Worker.run at lines 30 and 33 shares one
    assert len(decoded["function"]) == len({(n, f) for s, _ in samples for n, f, _ in s})


def test_pprof_of_a_real_target_by_protoc_and_go_tool_pprof(
        seed: dict[str, tuple[Path, int]]) -> None:
    """The gh-135371 example: every sample decoded is one of its known stacks, each with
    its share of the samples taken (what stderr says); ``go tool pprof -raw`` reads
    the same total."""
    path, taken = seed[".pb.gz"]
    decoded = _protoc(path.read_bytes())
    period = decoded["period"][0]
    stacks: Counter[tuple[str, ...]] = Counter()
    for frames, (count, nanoseconds) in _pprof_samples(decoded):
        assert nanoseconds == count * period
        for name, filename, line in frames:
            if name.startswith("[task] "):
                assert (filename, line) == ("<task>", 0), frames
            else:
                assert filename.endswith(".py") and line > 0, frames
        stacks[tuple(name for name, _, _ in frames)] += count
    assert stacks == _expected_seed(taken)
    go = shutil.which("go")
    assert go, f"go (Debian's golang-go: go tool pprof) reads the pprof files: {PROVISION}"
    raw = subprocess.run([go, "tool", "pprof", "-raw", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    counts = [int(m.group(1)) for m in re.finditer(r"^\s+(\d+)\s+\d+: [\d ]+$", raw.stdout,
                                                   re.MULTILINE)]
    assert sum(counts) == 7 * taken
    assert "[task] Task-1 <task>:0" in raw.stdout and "foo12 /home/user/seed_app.py:" in raw.stdout


# -- speedscope -----------------------------------------------------------------------------
def _validate_speedscope(doc: Any) -> None:
    """Against speedscope's published schema, by the draft the schema names."""
    assert SPEEDSCOPE_SCHEMA.is_file(), (
        f"speedscope's schema {SPEEDSCOPE_SCHEMA} is missing: scripts/provision.sh caches it "
        "(npm pack speedscope)")
    schema = json.loads(SPEEDSCOPE_SCHEMA.read_text())
    assert "$schema" in schema
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator(schema).iter_errors(doc)]
    assert not errors, errors[:10]


def _speedscope_stacks(doc: Any) -> Counter[tuple[tuple[str, str | None, int | None], ...]]:
    """(name, file, line) of each frame, root first -> weight."""
    frames = doc["shared"]["frames"]
    (profile,) = doc["profiles"]
    out: Counter[tuple[tuple[str, str | None, int | None], ...]] = Counter()
    for ids, weight in zip(profile["samples"], profile["weights"], strict=True):
        out[tuple((frames[i]["name"], frames[i].get("file"), frames[i].get("line"))
                  for i in ids)] += weight
    assert profile["startValue"] == 0 and profile["endValue"] == sum(out.values())
    return out


def test_speedscope_valid_by_its_schema_and_every_stack_exact() -> None:
    doc = json.loads(speedscope.render(synthetic()))
    _validate_speedscope(doc)
    assert _speedscope_stacks(doc) == {
        tuple((_label(n), n.filename or None, n.line if n.filename else None) for n in stack):
            count for stack, count in KNOWN.items()}


def test_speedscope_of_a_real_target_valid_by_its_schema(
        seed: dict[str, tuple[Path, int]]) -> None:
    path, taken = seed[".json"]
    doc = json.loads(path.read_text())
    _validate_speedscope(doc)
    stacks = _speedscope_stacks(doc)
    for stack in stacks:
        for name, filename, line in stack:
            assert name == (f"{name.rsplit(' (', 1)[0]} ({filename}:{line})" if filename
                            else name), stack
    by_name: Counter[tuple[str, ...]] = Counter()
    for stack, n in stacks.items():
        by_name[_names(tuple(name for name, _, _ in stack))] += n
    assert by_name == _expected_seed(taken)


# -- HTML -----------------------------------------------------------------------------------
WINDOW = (1200, 600)
ROW_PX = 18                        # flamegraph.html's ROW: one level's height


class _Page(HTMLParser):
    """The rendered DOM: the flame graph's nodes (their attributes, and their text as
    ``#text``), the elements found inside nodes (none: names are text) and the title."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[dict[str, str]] = []
        self.inside_nodes: list[str] = []
        self.title = ""
        self._in_title = False
        self._node: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if self._node is not None:
            self.inside_nodes.append(tag)
        elif tag == "div" and "node" in attributes.get("class", "").split():
            self._node = {**attributes, "#text": ""}
            self.nodes.append(self._node)
        self._in_title = tag == "h1" and attributes.get("id") == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False
        if tag == "div":
            self._node = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._node is not None:
            self._node["#text"] += data


def _chromium(page: Path, screenshot: Path, profile_dir: Path) -> _Page:
    """Open ``page`` in headless Chromium (closed network, as root), return its DOM once
    the scripts ran and write a screenshot of the window; no console message allowed
    (an uncaught error is one)."""
    chromium = shutil.which("chromium")
    assert chromium, f"chromium (Debian's package) renders the HTML flame graph: {PROVISION}"
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile_dir}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000",
            "--enable-logging=stderr", "--v=0", "--dump-dom", f"--screenshot={screenshot}",
            page.as_uri()]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = _Page()
    dom.feed(out.stdout)
    return dom


def _style(node: dict[str, str]) -> dict[str, str]:
    return dict(part.strip().split(": ", 1) for part in node["style"].split(";") if part.strip())


def _px(value: str) -> float:
    assert value.endswith("px"), value
    return float(value[:-2])


def _drawn_stacks(dom: _Page, total: int) -> Counter[tuple[str, ...]]:
    """The stacks the drawing shows: each node's parent is the node a level up whose
    extent holds its middle; its samples are its width's share of the root's; a stack
    counts the samples of its last node that its children do not cover."""
    boxes = []
    for node in dom.nodes:
        style = _style(node)
        left, width, top = _px(style["left"]), _px(style["width"]), _px(style["top"])
        assert top % ROW_PX == 0, style
        boxes.append((int(top // ROW_PX), left, width, node["title"]))
    (root,) = [b for b in boxes if b[0] == 0]
    assert root[3] == "all" and root[1] == 0 and root[2] > 0.9 * WINDOW[0], root
    paths: dict[int, tuple[str, ...]] = {}
    value: dict[tuple[str, ...], int] = {}
    for index, (level, left, width, title) in sorted(enumerate(boxes), key=lambda b: b[1][0]):
        if level == 0:
            paths[index] = ()
        else:
            middle = left + width / 2
            (parent,) = [i for i, b in enumerate(boxes) if b[0] == level - 1
                         and b[1] <= middle < b[1] + b[2]]
            paths[index] = (*paths[parent], title)
        samples = width / root[2] * total
        assert samples == pytest.approx(round(samples), abs=0.01), (title, width)
        assert paths[index] not in value, paths[index]        # each node drawn once
        value[paths[index]] = round(samples)
    assert value[()] == total
    stacks: Counter[tuple[str, ...]] = Counter()
    for path, count in value.items():
        own = count - sum(v for p, v in value.items() if len(p) == len(path) + 1
                          and p[:-1] == path)
        assert own >= 0, path
        if own:
            stacks[path] = own
    return stacks


def _png_pixels(data: bytes) -> tuple[int, int, Counter[tuple[int, ...]]]:
    """A PNG's width, height and how many pixels of each RGB colour it has (8-bit RGB or
    RGBA, not interlaced: what Chromium writes), its chunks' CRCs checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    chunks: list[tuple[bytes, bytes]] = []
    i = 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + length]
        assert struct.unpack(">I", data[i + 8 + length:i + 12 + length])[0] == \
            zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        i += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and colour in (2, 6) and interlace == 0, chunks[0]
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (stride + 1)
    pixels: Counter[tuple[int, ...]] = Counter()
    previous = bytearray(stride)
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:
                                                          (row + 1) * (stride + 1)])
        _unfilter(kind, line, previous, bpp)
        pixels.update(tuple(line[x:x + 3]) for x in range(0, stride, bpp))
        previous = line
    return width, height, pixels


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    """PNG's row filters undone in place (None, Sub, Up, Average, Paeth)."""
    for x in range(len(line)) if kind else ():
        a = line[x - bpp] if x >= bpp else 0
        b = previous[x]
        if kind == 1:
            line[x] = (line[x] + a) & 0xFF
        elif kind == 2:
            line[x] = (line[x] + b) & 0xFF
        elif kind == 3:
            line[x] = (line[x] + (a + b) // 2) & 0xFF
        else:
            assert kind == 4, kind
            c = previous[x - bpp] if x >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def _check_screenshot(path: Path, dom: _Page) -> None:
    """A PNG of the window with the flame graph in it: every node's colour, over at
    least half the area the DOM gives its boxes (the labels cover the rest)."""
    width, height, pixels = _png_pixels(path.read_bytes())
    assert (width, height) == WINDOW
    area: Counter[tuple[int, ...]] = Counter()
    for node in dom.nodes:
        style = _style(node)
        rgb = re.fullmatch(r"rgb\((\d+), (\d+), (\d+)\)", style["background"])
        assert rgb, style
        area[tuple(map(int, rgb.groups()))] += int((_px(style["width"]) - 2) * (17 - 2))
    for colour, pixels_wanted in area.items():
        assert pixels[colour] >= pixels_wanted / 2, (colour, pixels[colour], pixels_wanted)
    assert pixels[(255, 255, 255)] < width * height   # not a blank page


def _render(page: Path, name: str, tmp_path: Path) -> _Page:
    """Chromium's DOM of ``page``, its screenshot checked and kept (with the page) as
    a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(page, ARTIFACTS / f"{name}.html")
    screenshot = ARTIFACTS / f"{name}.png"
    screenshot.unlink(missing_ok=True)
    dom = _chromium(page, screenshot, tmp_path / "chromium-profile")
    assert dom.nodes, "no flame graph drawn"
    assert not dom.inside_nodes, dom.inside_nodes       # names set as text, never as HTML
    for node in dom.nodes:                               # a label where there is room
        assert node["#text"] in (node["title"], ""), node
    _check_screenshot(screenshot, dom)
    return dom


def test_html_renders_in_chromium_every_stack_at_its_width(tmp_path: Path) -> None:
    """Built here: Chromium draws every node once, at its level, as wide as its share
    of the samples; [task] nodes marked as tasks; names set as text, exactly (one is
    ``</script><b>&amp;``); the title says what was sampled."""
    page = tmp_path / "flamegraph.html"
    page.write_text(html.render(synthetic()))
    dom = _render(page, "synthetic", tmp_path)
    assert dom.title == "aiobpf profile of PID 4242: wall, 10 samples at 10.0 Hz"
    assert _drawn_stacks(dom, TOTAL) == {tuple(map(_label, stack)): count
                                         for stack, count in KNOWN.items()}
    tasks = {n["title"] for n in dom.nodes if "task" in n["class"].split()}
    assert tasks == {_label(n) for stack in KNOWN for n in stack if n.kind == "task"}


def test_html_of_a_real_target_renders_in_chromium(seed: dict[str, tuple[Path, int]],
                                                   tmp_path: Path) -> None:
    path, taken = seed[".html"]
    dom = _render(path, "seed-app", tmp_path)
    assert re.fullmatch(rf"aiobpf profile of PID \d+: wall, {taken} samples at [\d.]+ Hz",
                        dom.title), dom.title
    by_name: Counter[tuple[str, ...]] = Counter()
    for stack, n in _drawn_stacks(dom, 7 * taken).items():
        by_name[_names(stack)] += n
    assert by_name == _expected_seed(taken)
    for node in dom.nodes:
        assert ("task" in node["class"].split()) == node["title"].startswith("[task] "), node
