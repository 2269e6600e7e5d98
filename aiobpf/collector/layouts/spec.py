"""What aiobpf needs to know about CPython's memory layout, and where to find it.

Each entry names one logical value (``"task.coro"``), the binary whose DWARF
defines it (the interpreter, or the ``_asyncio`` module), its C spelling(s)
tried in order (members move and are renamed between versions), and, where
CPython publishes the same value at run time, the field of ``_Py_DebugOffsets``
(3.13+) or of the ``_asyncio`` module's ``AsyncioDebug`` section (3.14+) that
holds it.

Spellings: ``"Type:member.path"`` for a byte offset, ``"sizeof Type"`` for a
size, ``"bits Type:member.path"`` for a bit-field (stored as its bit position
from the struct start and, under ``name + ".width"``, its width), and
``"enum NAME"`` for an enumerator value.
"""

from __future__ import annotations

from dataclasses import dataclass

CORE = "core"        # the interpreter: executable or libpython
ASYNCIO = "asyncio"  # the _asyncio extension module (or the interpreter, when built in)


@dataclass(frozen=True)
class Field:
    name: str
    binary: str
    spellings: tuple[str, ...]
    debug: str | None = None    # _Py_DebugOffsets member path
    adebug: str | None = None   # _Py_AsyncioModuleDebugOffsets member path


def _f(name: str, binary: str, *spellings: str, debug: str | None = None,
       adebug: str | None = None) -> Field:
    return Field(name, binary, spellings, debug, adebug)


FIELDS: tuple[Field, ...] = (
    # runtime, interpreters, threads
    _f("runtime.interpreters_head", CORE, "_PyRuntimeState:interpreters.head",
       debug="runtime_state.interpreters_head"),
    _f("interp.next", CORE, "PyInterpreterState:next", debug="interpreter_state.next"),
    _f("interp.id", CORE, "PyInterpreterState:id", debug="interpreter_state.id"),
    _f("interp.threads_head", CORE, "PyInterpreterState:threads.head",
       debug="interpreter_state.threads_head"),
    _f("interp.modules", CORE, "PyInterpreterState:imports.modules", "PyInterpreterState:modules",
       debug="interpreter_state.imports_modules"),
    _f("interp.asyncio_tasks_head", CORE, "PyInterpreterState:asyncio_tasks_head",
       adebug="asyncio_interpreter_state.asyncio_tasks_head"),
    _f("tstate.next", CORE, "PyThreadState:next", debug="thread_state.next"),
    _f("tstate.interp", CORE, "PyThreadState:interp", debug="thread_state.interp"),
    _f("tstate.thread_id", CORE, "PyThreadState:thread_id", debug="thread_state.thread_id"),
    _f("tstate.native_thread_id", CORE, "PyThreadState:native_thread_id",
       debug="thread_state.native_thread_id"),
    _f("tstate.current_frame", CORE, "PyThreadState:current_frame",
       debug="thread_state.current_frame"),
    _f("tstate.cframe", CORE, "PyThreadState:cframe"),                      # 3.11, 3.12
    _f("cframe.current_frame", CORE, "_PyCFrame:current_frame"),            # 3.11, 3.12
    _f("tstate.asyncio_running_loop", CORE, "_PyThreadStateImpl:asyncio_running_loop",
       adebug="asyncio_thread_state.asyncio_running_loop"),
    _f("tstate.asyncio_running_task", CORE, "_PyThreadStateImpl:asyncio_running_task",
       adebug="asyncio_thread_state.asyncio_running_task"),
    _f("tstate.asyncio_tasks_head", CORE, "_PyThreadStateImpl:asyncio_tasks_head",
       adebug="asyncio_thread_state.asyncio_tasks_head"),
    _f("llist.next", CORE, "llist_node:next", debug="llist_node.next"),
    # frames
    _f("frame.code", CORE, "_PyInterpreterFrame:f_executable", "_PyInterpreterFrame:f_code",
       debug="interpreter_frame.executable"),
    _f("frame.previous", CORE, "_PyInterpreterFrame:previous", debug="interpreter_frame.previous"),
    _f("frame.instr_ptr", CORE, "_PyInterpreterFrame:instr_ptr", "_PyInterpreterFrame:prev_instr",
       debug="interpreter_frame.instr_ptr"),
    _f("frame.stackpointer", CORE, "_PyInterpreterFrame:stackpointer",
       debug="interpreter_frame.stackpointer"),                            # 3.14+: a pointer
    _f("frame.stacktop", CORE, "_PyInterpreterFrame:stacktop"),             # 3.11-3.13: an index
    _f("frame.owner", CORE, "_PyInterpreterFrame:owner", debug="interpreter_frame.owner"),
    _f("frame.localsplus", CORE, "_PyInterpreterFrame:localsplus",
       debug="interpreter_frame.localsplus"),
    _f("enum.FRAME_OWNED_BY_GENERATOR", CORE, "enum FRAME_OWNED_BY_GENERATOR"),
    _f("enum.FRAME_OWNED_BY_CSTACK", CORE, "enum FRAME_OWNED_BY_CSTACK"),
    _f("enum.FRAME_OWNED_BY_INTERPRETER", CORE, "enum FRAME_OWNED_BY_INTERPRETER"),
    _f("enum.FRAME_CREATED", CORE, "enum FRAME_CREATED"),
    _f("enum.FRAME_SUSPENDED", CORE, "enum FRAME_SUSPENDED"),
    _f("enum.FRAME_SUSPENDED_YIELD_FROM", CORE, "enum FRAME_SUSPENDED_YIELD_FROM"),
    _f("enum.FRAME_SUSPENDED_YIELD_FROM_LOCKED", CORE, "enum FRAME_SUSPENDED_YIELD_FROM_LOCKED"),
    _f("enum.FRAME_EXECUTING", CORE, "enum FRAME_EXECUTING"),
    _f("enum.FRAME_COMPLETED", CORE, "enum FRAME_COMPLETED"),
    _f("enum.FRAME_CLEARED", CORE, "enum FRAME_CLEARED"),
    # code objects
    _f("code.filename", CORE, "PyCodeObject:co_filename", debug="code_object.filename"),
    _f("code.name", CORE, "PyCodeObject:co_name", debug="code_object.name"),
    _f("code.qualname", CORE, "PyCodeObject:co_qualname", debug="code_object.qualname"),
    _f("code.linetable", CORE, "PyCodeObject:co_linetable", debug="code_object.linetable"),
    _f("code.firstlineno", CORE, "PyCodeObject:co_firstlineno", debug="code_object.firstlineno"),
    _f("code.code_adaptive", CORE, "PyCodeObject:co_code_adaptive",
       debug="code_object.co_code_adaptive"),
    # generators, coroutines, async generators and their helper objects
    _f("gen.frame_state", CORE, "PyGenObject:gi_frame_state", debug="gen_object.gi_frame_state"),
    _f("gen.iframe", CORE, "PyGenObject:gi_iframe", debug="gen_object.gi_iframe"),
    _f("gen.name", CORE, "PyGenObject:gi_name", debug="gen_object.gi_name"),
    _f("gen.qualname", CORE, "PyGenObject:gi_qualname"),
    _f("coro.frame_state", CORE, "PyCoroObject:cr_frame_state"),
    _f("coro.iframe", CORE, "PyCoroObject:cr_iframe"),
    _f("asyncgen.frame_state", CORE, "PyAsyncGenObject:ag_frame_state"),
    _f("asyncgen.iframe", CORE, "PyAsyncGenObject:ag_iframe"),
    _f("asend.gen", CORE, "PyAsyncGenASend:ags_gen"),
    _f("athrow.gen", CORE, "PyAsyncGenAThrow:agt_gen"),
    _f("corowrapper.coroutine", CORE, "PyCoroWrapper:cw_coroutine"),
    _f("anext.wrapped", CORE, "anextawaitableobject:wrapped"),
    # objects and types
    _f("object.type", CORE, "PyObject:ob_type", debug="pyobject.ob_type"),
    _f("varobject.size", CORE, "PyVarObject:ob_size", debug="tuple_object.ob_size"),
    _f("type.name", CORE, "PyTypeObject:tp_name", debug="type_object.tp_name"),
    _f("type.flags", CORE, "PyTypeObject:tp_flags", debug="type_object.tp_flags"),
    _f("type.basicsize", CORE, "PyTypeObject:tp_basicsize"),
    _f("type.dictoffset", CORE, "PyTypeObject:tp_dictoffset"),
    _f("type.base", CORE, "PyTypeObject:tp_base"),
    _f("type.call", CORE, "PyTypeObject:tp_call"),
    _f("heaptype.cached_keys", CORE, "PyHeapTypeObject:ht_cached_keys"),
    _f("tuple.items", CORE, "PyTupleObject:ob_item", debug="tuple_object.ob_item"),
    _f("list.items", CORE, "PyListObject:ob_item", debug="list_object.ob_item"),
    _f("bytes.sval", CORE, "PyBytesObject:ob_sval", debug="bytes_object.ob_sval"),
    _f("long.tag", CORE, "PyLongObject:long_value.lv_tag", debug="long_object.lv_tag"),  # 3.12+
    _f("long.digits", CORE, "PyLongObject:long_value.ob_digit", "PyLongObject:ob_digit",
       debug="long_object.ob_digit"),
    _f("unicode.length", CORE, "PyASCIIObject:length", debug="unicode_object.length"),
    _f("unicode.state", CORE, "PyASCIIObject:state", debug="unicode_object.state"),
    _f("unicode.kind", CORE, "bits PyASCIIObject:state.kind"),
    _f("unicode.compact", CORE, "bits PyASCIIObject:state.compact"),
    _f("unicode.ascii", CORE, "bits PyASCIIObject:state.ascii"),
    _f("unicode.ascii_size", CORE, "sizeof PyASCIIObject", debug="unicode_object.asciiobject_size"),
    _f("unicode.compact_size", CORE, "sizeof PyCompactUnicodeObject"),
    _f("unicode.data_any", CORE, "PyUnicodeObject:data.any"),
    _f("cell.ref", CORE, "PyCellObject:ob_ref"),
    _f("weakref.object", CORE, "PyWeakReference:wr_object"),
    _f("module.dict", CORE, "PyModuleObject:md_dict"),
    _f("function.code", CORE, "PyFunctionObject:func_code"),
    _f("function.qualname", CORE, "PyFunctionObject:func_qualname"),
    _f("function.closure", CORE, "PyFunctionObject:func_closure"),
    _f("method.func", CORE, "PyMethodObject:im_func"),
    _f("method.self", CORE, "PyMethodObject:im_self"),
    _f("cfunction.ml", CORE, "PyCFunctionObject:m_ml"),
    _f("cfunction.self", CORE, "PyCFunctionObject:m_self"),
    _f("methoddef.name", CORE, "PyMethodDef:ml_name"),
    _f("partial.fn", CORE, "partialobject:fn"),
    _f("partial.args", CORE, "partialobject:args"),
    # dict and set internals
    _f("dict.used", CORE, "PyDictObject:ma_used"),
    _f("dict.keys", CORE, "PyDictObject:ma_keys", debug="dict_object.ma_keys"),
    _f("dict.values", CORE, "PyDictObject:ma_values", debug="dict_object.ma_values"),
    _f("dictkeys.log2_size", CORE, "PyDictKeysObject:dk_log2_size"),
    _f("dictkeys.log2_index_bytes", CORE, "PyDictKeysObject:dk_log2_index_bytes"),
    _f("dictkeys.kind", CORE, "PyDictKeysObject:dk_kind"),
    _f("dictkeys.nentries", CORE, "PyDictKeysObject:dk_nentries"),
    _f("dictkeys.indices", CORE, "PyDictKeysObject:dk_indices"),
    _f("dictvalues.values", CORE, "PyDictValues:values"),
    _f("dictvalues.valid", CORE, "PyDictValues:valid"),                     # 3.13+
    _f("dictentry.size", CORE, "sizeof PyDictKeyEntry"),
    _f("dictentry.key", CORE, "PyDictKeyEntry:me_key"),
    _f("dictentry.value", CORE, "PyDictKeyEntry:me_value"),
    _f("dictuentry.size", CORE, "sizeof PyDictUnicodeEntry"),
    _f("dictuentry.key", CORE, "PyDictUnicodeEntry:me_key"),
    _f("dictuentry.value", CORE, "PyDictUnicodeEntry:me_value"),
    _f("set.mask", CORE, "PySetObject:mask", debug="set_object.mask"),
    _f("set.table", CORE, "PySetObject:table", debug="set_object.table"),
    _f("set.used", CORE, "PySetObject:used", debug="set_object.used"),
    _f("setentry.size", CORE, "sizeof setentry"),
    _f("setentry.key", CORE, "setentry:key"),
    _f("deque.leftblock", CORE, "dequeobject:leftblock"),
    _f("deque.leftindex", CORE, "dequeobject:leftindex"),
    _f("deque.size", CORE, "dequeobject:ob_base.ob_size"),
    _f("dequeblock.data", CORE, "block:data"),
    _f("dequeblock.rightlink", CORE, "block:rightlink"),
    # the C asyncio module
    _f("future.loop", ASYNCIO, "FutureObj:fut_loop"),
    _f("future.callback0", ASYNCIO, "FutureObj:fut_callback0"),
    _f("future.callbacks", ASYNCIO, "FutureObj:fut_callbacks"),
    _f("future.state", ASYNCIO, "FutureObj:fut_state"),
    _f("future.awaited_by", ASYNCIO, "FutureObj:fut_awaited_by"),
    _f("future.awaited_by_is_set", ASYNCIO, "FutureObj:fut_awaited_by_is_set"),
    _f("task.loop", ASYNCIO, "TaskObj:task_loop"),
    _f("task.callback0", ASYNCIO, "TaskObj:task_callback0"),
    _f("task.callbacks", ASYNCIO, "TaskObj:task_callbacks"),
    _f("task.state", ASYNCIO, "TaskObj:task_state"),
    _f("task.fut_waiter", ASYNCIO, "TaskObj:task_fut_waiter"),
    _f("task.coro", ASYNCIO, "TaskObj:task_coro", adebug="asyncio_task_object.task_coro"),
    _f("task.name", ASYNCIO, "TaskObj:task_name", adebug="asyncio_task_object.task_name"),
    _f("task.awaited_by", ASYNCIO, "TaskObj:task_awaited_by",
       adebug="asyncio_task_object.task_awaited_by"),
    _f("task.awaited_by_is_set", ASYNCIO, "TaskObj:task_awaited_by_is_set",
       adebug="asyncio_task_object.task_awaited_by_is_set"),
    _f("task.is_task", ASYNCIO, "TaskObj:task_is_task", adebug="asyncio_task_object.task_is_task"),
    _f("task.node", ASYNCIO, "TaskObj:task_node", adebug="asyncio_task_object.task_node"),
    _f("futureiter.future", ASYNCIO, "futureiterobject:future"),
    _f("stepwrapper.task", ASYNCIO, "TaskStepMethWrapper:sw_task"),
    _f("enum.STATE_PENDING", ASYNCIO, "enum STATE_PENDING"),
    _f("enum.STATE_CANCELLED", ASYNCIO, "enum STATE_CANCELLED"),
    _f("enum.STATE_FINISHED", ASYNCIO, "enum STATE_FINISHED"),
)

# Where the published offset tables themselves keep each member: the layout of
# _Py_DebugOffsets (3.13+) and of the _asyncio module's debug offsets (3.14+).
DEBUG_STRUCT = "_Py_DebugOffsets"
ASYNCIO_DEBUG_STRUCT = "_Py_AsyncioModuleDebugOffsets"
DEBUG_HEADER = ("cookie", "version", "free_threaded")


def debug_paths() -> list[str]:
    """Members of _Py_DebugOffsets that aiobpf reads, header first."""
    return list(DEBUG_HEADER) + sorted({f.debug for f in FIELDS if f.debug})


def asyncio_debug_paths() -> list[str]:
    """Members of the _asyncio module's debug offsets that aiobpf reads."""
    return sorted({f.adebug for f in FIELDS if f.adebug})
