"""Crafted ELF files for the tests: small modules with DWARF, then broken on purpose.

``build_module`` compiles a shared object whose DWARF defines ``TaskObj`` and
``FutureObj`` (names the layout code asks the ``_asyncio`` module for); the
``patch_*`` functions turn it into what a hostile process could map: a typedef that
names itself, an anonymous member whose type is the struct holding it, a section
header with an absurd size.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

MODULE_SOURCE = """
typedef struct TaskObj_s TaskObj;
struct TaskObj_s { long ob_refcnt; void *ob_type; void *task_loop; long task_state;
                   void *task_coro; void *task_name; };
struct FutureObj_s { struct { long ob_refcnt; void *ob_type; }; void *fut_loop;
                     long fut_state; };
typedef struct FutureObj_s FutureObj;
enum { STATE_PENDING = 7, STATE_DONE };
TaskObj *task_ptr; FutureObj *future_ptr; int state_var = STATE_PENDING;
static const char wakeup_name[] = "task_wakeup";
const char *name_ref = wakeup_name;
"""

_SHDR_SIZE_FIELD = 32     # Elf64_Shdr.sh_size


def build_module(out: Path, source: str = MODULE_SOURCE, build_id: str | None = None) -> Path:
    """Compile ``source`` into the shared object ``out`` (with DWARF 5, uncompressed);
    ``build_id`` (hex) chooses its GNU build-id."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the crafted modules (apt install gcc)")
    src = out.with_suffix(".c")
    src.write_text(source)
    argv = [gcc, "-g", "-gdwarf-5", "-O0", "-shared", "-fPIC", "-o", str(out), str(src),
            f"-Wl,--build-id=0x{build_id}" if build_id else "-Wl,--build-id"]
    subprocess.run(argv, check=True, capture_output=True)
    return out


def _dies(path: Path):
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        info_offset = elf.get_section_by_name(".debug_info")["sh_offset"]
        out = []
        for cu in elf.get_dwarf_info().iter_CUs():
            stack = [cu.get_top_DIE()]
            while stack:
                die = stack.pop()
                out.append((die, cu.cu_offset))
                stack.extend(die.iter_children())
        return info_offset, out


def _name(die) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    return attr.value.decode() if attr else None


def _point_type(data: bytearray, info_offset: int, die, cu_offset: int, target_offset: int
                ) -> None:
    attr = die.attributes["DW_AT_type"]
    assert attr.form == "DW_FORM_ref4", attr.form
    struct.pack_into("<I", data, info_offset + attr.offset, target_offset - cu_offset)


def patch_self_references(path: Path) -> None:
    """The typedef ``TaskObj`` names itself; ``FutureObj``'s anonymous member has the
    type of ``FutureObj``'s own struct (each loops for ever when followed)."""
    info_offset, dies = _dies(path)
    data = bytearray(path.read_bytes())
    typedef = next((d, cu) for d, cu in dies
                   if d.tag == "DW_TAG_typedef" and _name(d) == "TaskObj")
    _point_type(data, info_offset, typedef[0], typedef[1], typedef[0].offset)
    outer = next((d, cu) for d, cu in dies
                 if d.tag == "DW_TAG_structure_type" and _name(d) == "FutureObj_s")
    anonymous = next(c for c in outer[0].iter_children()
                     if c.tag == "DW_TAG_member" and _name(c) is None)
    _point_type(data, info_offset, anonymous, outer[1], outer[0].offset)
    path.write_bytes(bytes(data))


def section_header_offset(path: Path, name: str) -> int:
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == name)
        return elf.header["e_shoff"] + index * elf.header["e_shentsize"]


def patch_section_size(path: Path, name: str, size: int) -> None:
    """Section ``name`` claims ``size`` bytes (whatever the file holds)."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, section_header_offset(path, name) + _SHDR_SIZE_FIELD, size)
    path.write_bytes(bytes(data))


def _section(path: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of section ``name``."""
    with open(path, "rb") as stream:
        sec = ELFFile(stream).get_section_by_name(name)
        assert sec is not None, f"{path} has no {name}"
        return sec["sh_offset"], sec["sh_size"]


def set_build_id(path: Path, build_id: str) -> None:
    """Replace the GNU build-id (same length: ``build_id`` is hex of the old size)."""
    offset, _ = _section(path, ".note.gnu.build-id")
    data = bytearray(path.read_bytes())
    namesz, descsz, kind = struct.unpack_from("<III", data, offset)
    assert kind == 3 and descsz == len(bytes.fromhex(build_id)), (kind, descsz)
    desc = offset + 12 + (namesz + 3) // 4 * 4
    data[desc:desc + descsz] = bytes.fromhex(build_id)
    path.write_bytes(bytes(data))


def set_debuglink(path: Path, name: str) -> None:
    """``.gnu_debuglink`` names ``name`` (any string: an absolute path too), its CRC kept
    where it was; ``name`` must fit in the room of the old name."""
    offset, size = _section(path, ".gnu_debuglink")
    data = bytearray(path.read_bytes())
    old = data[offset:offset + size]
    crc_at = (old.index(b"\0") + 4) // 4 * 4
    raw = name.encode()
    assert len(raw) < crc_at, f"{name!r} does not fit in {crc_at - 1} bytes"
    data[offset:offset + crc_at] = raw.ljust(crc_at, b"\0")
    path.write_bytes(bytes(data))


def _struct_of(dies, typedef: str):
    """(the struct DIE a typedef names, its CU offset) and the typedef's (DIE, CU offset)."""
    by_offset = {d.offset: (d, cu) for d, cu in dies}
    named = next((d, cu) for d, cu in dies
                 if d.tag == "DW_TAG_typedef" and _name(d) == typedef
                 and "DW_AT_type" in d.attributes)
    attr = named[0].attributes["DW_AT_type"]
    return by_offset[attr.value + named[1]], named


def patch_typedef_loop(path: Path, typedef: str) -> None:
    """The typedef ``typedef`` names itself (following it loops for ever)."""
    info_offset, dies = _dies(path)
    _, (die, cu) = _struct_of(dies, typedef)
    data = bytearray(path.read_bytes())
    _point_type(data, info_offset, die, cu, die.offset)
    path.write_bytes(bytes(data))


def patch_member_offset(path: Path, typedef: str, member: str, offset: int) -> int:
    """The DWARF of ``typedef``'s struct puts ``member`` at ``offset`` (a plausible lie);
    returns the true offset."""
    info_offset, dies = _dies(path)
    (struct_die, _), _ = _struct_of(dies, typedef)
    child = next(c for c in struct_die.iter_children() if _name(c) == member)
    attr = child.attributes["DW_AT_data_member_location"]
    assert attr.form == "DW_FORM_data1" and offset < 256, attr.form
    data = bytearray(path.read_bytes())
    data[info_offset + attr.offset] = offset
    path.write_bytes(bytes(data))
    return attr.value
