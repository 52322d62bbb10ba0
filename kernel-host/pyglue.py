"""kbox native kernel: the Python side, minimal glue around IPython's InteractiveShell.

The Jupyter protocol (sockets, signing, JSON, status, ordering) and the output streams live
in C (kernel-host/kernel.c, pyshell.c). This module, compiled into kbox-kernel-host and run
by its embedded CPython, only:
  - builds the shell with a display hook, display publisher, traceback display, pager and
    input() that hand their data to the C module `_kbox`;
  - offers the entry points the C side calls per request (run, complete, inspect,
    is_complete, history, user_expressions), shaped as ipykernel 6.17 shapes them.
It never speaks the protocol itself and never serializes JSON.
"""
import builtins
import os
import re
import signal
import sys

import _signal

import _kbox

SESSION = 1  # history session number of this kernel (history is in memory only)


def _lazy_ipython_package():
    """Import the IPython package without running IPython/__init__.py yet.

    IPython's __init__ imports the terminal frontend (prompt_toolkit, the debugger, about
    0.3 s of the kernel's start) that a kernel never uses. The package module is created
    from its spec without executing it; the first access to an attribute of the package
    itself (IPython.__version__, `from IPython import embed`, ...) runs the real __init__
    in place, so user code sees the complete package. Submodule imports
    (IPython.display, IPython.core...) work as usual throughout.
    """
    import importlib.util

    spec = importlib.util.find_spec("IPython")
    mod = importlib.util.module_from_spec(spec)
    state = {"loaded": False}

    def __getattr__(name):
        if name == "get_ipython" and not state["loaded"]:
            from IPython.core.getipython import get_ipython

            return get_ipython
        if not state["loaded"]:
            state["loaded"] = True
            spec.loader.exec_module(mod)
        try:
            return mod.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'IPython' has no attribute {name!r}") from None

    mod.__getattr__ = __getattr__
    sys.modules["IPython"] = mod


def _safe_str(obj):
    try:
        return str(obj)
    except BaseException:  # a hostile __str__ must not break error reporting
        return "<unprintable %s object>" % type(obj).__name__


def _make_shell():
    from traitlets import Any, CBool, Instance, Type, default

    from IPython.core import page, payloadpage
    from IPython.core.autocall import ZMQExitAutocall
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.history import HistoryManager
    from IPython.core.interactiveshell import InteractiveShell, InteractiveShellABC

    # IPython keeps its per-cell bookkeeping in traitlets; each set validates the value and
    # builds a change notification (a sixth of the kernel's instructions for a trivial
    # cell). Nothing observes the eight that change on every cell, so our subclasses declare
    # them as plain attributes: same names, same values. execution_count stays a trait (it
    # is public API that code may observe).
    class KboxDisplayHook(DisplayHook):
        """The last expression of a cell: execute_result, sent by C."""

        exec_result = None

        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            _kbox.execute_result(self.prompt_count, format_dict, md_dict or {})

        def finish_displayhook(self):
            pass

    class KboxDisplayPublisher(DisplayPublisher):
        """display() and rich reprs: display_data / update_display_data, sent by C."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs):
            self._validate_data(data, metadata)
            _kbox.display_data(data, metadata or {}, transient or {}, bool(update))

        def clear_output(self, wait=False):
            _kbox.clear_output(bool(wait))

    class KboxHistory(HistoryManager):
        """History in memory only: no SQLite file, no saving thread, no write per cell."""

        enabled = CBool(False)
        _i00 = _i = _ii = _iii = ""

        def store_inputs(self, line_num, source, source_raw=None):
            super().store_inputs(line_num, source, source_raw)
            # Only a saving thread (which we do not run) would drain this cache.
            self.db_input_cache.clear()

        def new_session(self, conn=None):
            # No database to number sessions: this kernel's is SESSION, as history_request
            # reports it (%history -g then prints this session's lines without a prefix).
            self.session_number = SESSION

        # IPython answers these from its database (%history -l, -g and code calling them);
        # ours is this session in memory, the same one history_request reads.
        def get_tail(self, n=10, raw=True, output=False, include_latest=False):
            rows = history("tail", output=output, raw=raw, n=n if include_latest else n + 1)
            rows = rows["history"]
            return iter(rows if include_latest else rows[:-1])

        def search(self, pattern="*", raw=True, search_raw=True, output=False, n=None,
                   unique=False):
            return iter(history("search", output=output, raw=raw, pattern=pattern, n=n,
                                unique=unique, search_raw=search_raw)["history"])

    class ZMQInteractiveShell(InteractiveShell):
        """IPython's shell as ipykernel configures it.

        Named like ipykernel's class on purpose: libraries (tqdm, plotly, pandas' options)
        detect a notebook kernel by this class name.
        """

        displayhook_class = Type(KboxDisplayHook)
        display_pub_class = Type(KboxDisplayPublisher)
        readline_use = CBool(False)
        autoindent = CBool(False)
        exiter = Instance(ZMQExitAutocall)
        kernel = Any(None)
        keepkernel_on_exit = None
        _last_traceback = None
        last_execution_succeeded = True
        last_execution_result = None

        @default("exiter")
        def _default_exiter(self):
            return ZMQExitAutocall(self)

        # The completer (it imports jedi and parso: ~6 MB of an idle kernel and ~50 ms of its
        # start) is made on first use: the first completion, the %config magic (which lists
        # it among the configurables), or code that reaches for get_ipython().Completer.
        _completer = None

        def init_completer(self):
            self.configurables = _Configurables(self, self.configurables)

        @property
        def Completer(self):
            if self._completer is None:
                InteractiveShell.init_completer(self)
            return self._completer

        @Completer.setter
        def Completer(self, value):
            self._completer = value

        def init_history(self):
            self.history_manager = KboxHistory(shell=self, parent=self)
            self.configurables.append(self.history_manager)

        def init_environment(self):
            env = os.environ
            env["TERM"] = "xterm-color"
            env["CLICOLOR"] = "1"
            env["PAGER"] = "cat"
            env["GIT_PAGER"] = "cat"

        def init_hooks(self):
            super().init_hooks()
            # `obj?` and %page become a "page" payload of the execute_reply.
            self.set_hook("show_in_pager", page.as_hook(payloadpage.page), 99)

        def init_virtualenv(self):
            pass

        def ask_exit(self):
            self.exit_now = not self.keepkernel_on_exit
            self.payload_manager.write_payload(
                dict(source="ask_exit", keepkernel=self.keepkernel_on_exit))
            if self.exit_now:
                _kbox.exit_after_request()

        def set_next_input(self, text, replace=False):
            self.payload_manager.write_payload(
                dict(source="set_next_input", text=text, replace=replace))

        def run_cell(self, *args, **kwargs):
            self._last_traceback = None
            return super().run_cell(*args, **kwargs)

        def _showtraceback(self, etype, evalue, stb):
            _kbox.error(_safe_str(getattr(etype, "__name__", etype)), _safe_str(evalue),
                        [_safe_str(s) for s in stb])
            self._last_traceback = stb

        def enable_gui(self, gui=None):
            if gui not in (None, "inline"):
                from IPython.core.error import UsageError

                raise UsageError("GUI event loops are not available in this kernel")

    class _Configurables(list):
        """shell.configurables, which only %config reads (by iterating it): the completer is
        made before it does, so %config sees IPCompleter as in IPython."""

        def __init__(self, shell, items):
            super().__init__(items)
            self._shell = shell

        def __iter__(self):
            self._shell.Completer  # noqa: B018 (made on first use)
            return super().__iter__()

    InteractiveShellABC.register(ZMQInteractiveShell)
    return ZMQInteractiveShell.instance()


class Comm:
    """A comm (ipykernel's API): the kernel side of a frontend object such as a widget."""

    def __init__(self, target_name="comm", data=None, metadata=None, buffers=None,
                 comm_id=None, primary=True, target_module=None, **kwargs):
        import uuid

        self.comm_id = comm_id or uuid.uuid4().hex
        self.primary = primary
        self.target_name = target_name
        self.target_module = target_module
        self.kernel = kernel
        self._msg_callback = None
        self._close_callback = None
        self._closed = True
        if primary:
            self.open(data=data, metadata=metadata, buffers=buffers)
        else:
            self._closed = False

    def _publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        content = dict(data={} if data is None else data, comm_id=self.comm_id, **keys)
        _kbox.comm_publish(msg_type, content, metadata or {}, list(buffers or ()))

    def open(self, data=None, metadata=None, buffers=None):
        kernel.comm_manager.register_comm(self)
        try:
            self._publish_msg("comm_open", data=data, metadata=metadata, buffers=buffers,
                              target_name=self.target_name, target_module=self.target_module)
            self._closed = False
        except Exception:
            kernel.comm_manager.unregister_comm(self)
            raise

    def close(self, data=None, metadata=None, buffers=None, deleting=False):
        if self._closed:
            return
        self._closed = True
        self._publish_msg("comm_close", data=data, metadata=metadata, buffers=buffers)
        if not deleting:
            kernel.comm_manager.unregister_comm(self)

    def send(self, data=None, metadata=None, buffers=None):
        self._publish_msg("comm_msg", data=data, metadata=metadata, buffers=buffers)

    def on_close(self, callback):
        self._close_callback = callback

    def on_msg(self, callback):
        self._msg_callback = callback

    def handle_close(self, msg):
        if self._close_callback:
            self._close_callback(msg)

    def handle_msg(self, msg):
        if self._msg_callback:
            shell.events.trigger("pre_execute")
            self._msg_callback(msg)
            shell.events.trigger("post_execute")

    def __del__(self):
        try:
            self.close(deleting=True)
        except Exception:
            pass


class CommManager:
    """Comm targets and open comms (ipykernel's API); handles comm_open/msg/close."""

    def __init__(self):
        self.comms = {}
        self.targets = {}

    def register_target(self, target_name, f):
        if isinstance(f, str):
            from traitlets.utils.importstring import import_item

            f = import_item(f)
        self.targets[target_name] = f

    def unregister_target(self, target_name, f=None):
        return self.targets.pop(target_name)

    def register_comm(self, comm):
        self.comms[comm.comm_id] = comm
        return comm.comm_id

    def unregister_comm(self, comm):
        self.comms.pop(comm.comm_id, None)

    def get_comm(self, comm_id):
        return self.comms.get(comm_id)

    def comm_open(self, msg):
        content = msg["content"]
        comm = Comm(comm_id=content["comm_id"], primary=False, target_name=content["target_name"])
        self.register_comm(comm)
        f = self.targets.get(content["target_name"])
        if f is not None:
            try:
                f(comm, msg)
                return
            except Exception:
                shell.showtraceback()
        comm.close()

    def comm_msg(self, msg):
        comm = self.get_comm(msg["content"]["comm_id"])
        if comm is not None:
            try:
                comm.handle_msg(msg)
            except Exception:
                shell.showtraceback()

    def comm_close(self, msg):
        comm = self.comms.pop(msg["content"]["comm_id"], None)
        if comm is not None:
            comm._closed = True
            try:
                comm.handle_close(msg)
            except Exception:
                shell.showtraceback()

    def comm_info(self, target_name=None):
        return {"status": "ok", "comms": {
            k: {"target_name": c.target_name} for k, c in self.comms.items()
            if target_name is None or c.target_name == target_name}}


class Kernel:
    """What code reaching for get_ipython().kernel finds (ipykernel's Kernel, in part)."""

    implementation = "kbox"

    def __init__(self):
        self.comm_manager = CommManager()
        self.shell = None


kernel = Kernel()
shell = None


class _IpykernelCommAlias:
    """`from ipykernel.comm import Comm` (widgets, plotting libraries) gets this kernel's Comm
    and CommManager: ipykernel's own classes only work inside an ipykernel process."""

    names = ("ipykernel.comm", "ipykernel.comm.comm", "ipykernel.comm.manager")

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname == self.names[0])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.Comm = Comm
        module.CommManager = CommManager
        module.__all__ = ["Comm", "CommManager"]
        if module.__name__ == self.names[0]:
            module.__path__ = []


def comm(msg_type, msg):
    """comm_open / comm_msg / comm_close from the frontend."""
    getattr(kernel.comm_manager, msg_type)(msg)


def comm_info(target_name=None):
    return kernel.comm_manager.comm_info(target_name)


# IPython's split_user_input pattern without its lazy rest-of-line group, which costs a
# backtracking stack per line: for a line without line breaks that group always matches, so
# the others match exactly as they do there.
_FIRST_WORD = re.compile(r"(\s*)([,;/%]|!!?|\?\??)?\s*(%{0,2}[\w\.\*]*)").match


def _kernel_magics(shell):
    """The magics ipykernel changes or adds for a kernel without a terminal: %edit sends an
    `edit_magic` payload (the frontend opens the file; IPython's own runs $EDITOR), %less,
    %more and %man page their text, %clear clears, %autosave sets a notebook's interval.
    %connect_info and %qtconsole say why they cannot work here (the kernel host owns the
    connection, and nothing graphical runs in a sandbox)."""
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, line_magic, magics_class
    from IPython.core.magics.code import CodeMagics, InteractivelyDefined, MacroToEdit

    @magics_class
    class KernelMagics(Magics):
        @line_magic
        def edit(self, parameter_s="", last_call=None):
            """Opens a file, an object's source or history lines in the frontend's editor."""
            last_call = last_call or ["", ""]
            opts, args = self.parse_options(parameter_s, "prn:")
            find = CodeMagics._find_edit_target
            try:
                try:
                    filename, lineno, _ = find(self.shell, args, opts, last_call)
                except InteractivelyDefined as e:
                    # Defined in a cell, which has no file here: that input, as IPython's
                    # own %edit does.
                    print("Editing In[%i]" % e.index)
                    filename, lineno, _ = find(self.shell, str(e.index), opts, last_call)
            except MacroToEdit:
                print("Macro editing not yet implemented in 2-process model.")
                return
            self.shell.payload_manager.write_payload(
                {"source": "edit_magic", "filename": os.path.abspath(filename),
                 "line_number": lineno})

        @line_magic
        def clear(self, arg_s):
            """Clears the terminal."""
            self.shell.system("clear")

        @line_magic
        def less(self, arg_s):
            """Shows a file through the pager (.py files highlighted)."""
            from IPython.core import page
            from IPython.utils import openpy

            if not arg_s:
                raise UsageError("Missing filename.")
            if arg_s.endswith(".py"):
                text = self.shell.pycolorize(openpy.read_py_file(arg_s,
                                                                 skip_encoding_cookie=False))
            else:
                with open(arg_s) as f:
                    text = f.read()
            page.page(text)

        more = line_magic("more")(less)

        @line_magic
        def man(self, arg_s):
            """Shows a man page through the pager."""
            from IPython.core import page

            page.page(self.shell.getoutput("man %s | col -b" % arg_s, split=False))

        @line_magic
        def autosave(self, arg_s):
            """Sets the notebook's autosave interval, in seconds (0 disables it)."""
            from IPython.display import Javascript, display

            try:
                interval = int(arg_s)
            except ValueError as e:
                raise UsageError("%%autosave requires an integer, got %r" % arg_s) from e
            display(Javascript("IPython.notebook.set_autosave_interval(%i)" % (1000 * interval)),
                    include=["application/javascript"])
            print("Autosaving every %i seconds" % interval if interval else "Autosave disabled")

        @line_magic
        def connect_info(self, arg_s):
            """Not available: the kernel host owns this kernel's connection."""
            raise UsageError("%connect_info is not available: this kernel's connection is "
                             "managed by its kernel host; connect through its gateway")

        @line_magic
        def qtconsole(self, arg_s):
            """Not available: nothing graphical runs beside this kernel."""
            raise UsageError("%qtconsole is not available in this kernel")

    shell.register_magics(KernelMagics)
    shell.magics_manager.register_alias("ed", "edit")


def first_word(line):
    """The `ifun` IPython's prefilter sees in a line without line breaks."""
    return _FIRST_WORD(line).group(3).strip()


def _install_fast_paths(shell):
    """Three shortcuts in IPython's per-cell work whose results equal IPython's own for the
    cells they accept; any other cell takes IPython's path.

    - Static input transformation: IPython tokenizes every cell looking for its syntax
      (%magics, !shell, ?help, `,;/` autocall escapes, pasted `>>>`/`In [n]:` prompts,
      leading indentation, %%cell magics). A cell with none of those characters or
      prefixes is returned unchanged by every default transform, plus a final newline.
      Cells with any of them, or a manager whose transform lists were changed (by user
      code or an extension), go through IPython's TransformerManager.
    - should_run_async: true only if compiling with top-level await gives a coroutine,
      which needs an `await` or `async` token; without either substring it is False.
    - The prefilter of single-line cells (automagic, macros, autocall), below.

    What they save is measured in docs/BENCHMARKS.md (instructions per trivial execute).
    """
    tm = shell.input_transformer_manager
    slow_transform = tm.transform_cell
    defaults = (list(tm.cleanup_transforms), list(tm.line_transforms),
                list(tm.token_transformers))

    def transform_cell(cell):
        if ("%" in cell or "!" in cell or "?" in cell or ">>>" in cell or "..." in cell
                or "In [" in cell
                or (tm.cleanup_transforms, tm.line_transforms, tm.token_transformers)
                != defaults):
            return slow_transform(cell)
        lines = cell.splitlines()
        if not lines or not lines[0] or lines[0].isspace() or lines[0][0] in " \t":
            return slow_transform(cell)
        for line in lines:
            if line.lstrip()[:1] in (",", ";", "/"):
                return slow_transform(cell)
        return cell if cell.endswith("\n") else cell + "\n"

    tm.transform_cell = transform_cell
    slow_async = shell.should_run_async

    def should_run_async(raw_cell, *, transformed_cell=None, preprocessing_exc_tuple=None):
        if (transformed_cell is not None and "await" not in transformed_cell
                and "async" not in transformed_cell):
            return False
        return slow_async(raw_cell, transformed_cell=transformed_cell,
                          preprocessing_exc_tuple=preprocessing_exc_tuple)

    shell.should_run_async = should_run_async

    # - Dynamic (prefilter) transformation of single-line cells: IPython offers the line to
    #   each checker (emacs, macro, IPyAutocall, assignment, automagic, Python operators,
    #   autocall); only the macro, IPyAutocall, automagic and autocall ones can change it
    #   (the others pick a handler that returns the line as it is). When none of those can
    #   fire (the line's first word names no Macro or IPyAutocall object and no line magic;
    #   autocall off) and the prefilter machinery is IPython's default, the line comes back
    #   unchanged, and so does the cell. Anything else takes IPython's path.
    from IPython.core.autocall import IPyAutocall
    from IPython.core.macro import Macro

    pm = shell.prefilter_manager
    slow_shell_transform = shell.transform_cell
    line_magics = shell.magics_manager.magics["line"]
    default_checkers = list(pm.checkers)
    default_normal = pm._handlers.get("normal")

    def shell_transform_cell(raw_cell):
        if (pm.transformers or shell.input_transformers_post or shell.autocall
                or pm.checkers != default_checkers
                or pm._handlers.get("normal") is not default_normal):
            return slow_shell_transform(raw_cell)
        cell = tm.transform_cell(raw_cell)
        if len(cell.splitlines()) != 1:
            return cell
        line = cell.rstrip("\n")
        ifun = first_word(line)
        if ifun in line_magics or isinstance(shell.user_ns.get(ifun), (Macro, IPyAutocall)):
            return slow_shell_transform(raw_cell)
        shell._last_input_line = line
        return line + "\n"

    shell.transform_cell = shell_transform_cell


# ---- asyncio: the kernel's event loop, as ipykernel has one ------------------------------
#
# ipykernel runs every request inside its asyncio loop, and users count on three things that
# follow: a task or callback a cell schedules keeps running between cells; a synchronous cell
# sees a running loop (`asyncio.create_task`, `get_running_loop()`; hence also `asyncio.run()`
# and `loop.run_until_complete()` refuse to run there); `await` cells run on that same loop.
# Here the loop runs only when it has something to do, so a kernel whose user never touches
# asyncio pays nothing for it (docs/BENCHMARKS.md counts instructions per request):
#   - an `await` cell: IPython's runner runs it on this loop (its loop global points here);
#   - a synchronous cell: the loop is marked running for the cell's length (is_running(),
#     the thread's running loop), exactly what such a cell sees inside ipykernel's loop,
#     which is blocked by the cell there too;
#   - between requests the C side asks loop_state() and sleeps in poll() on the request fds
#     plus the loop's selector (readable when a socket, a pipe or call_soon_threadsafe()
#     wakes a fd the loop watches) until the earliest timer; then it runs one pass of the
#     loop (run_loop_once), and asks again. A request waits at most for the pass in course.

_loop = None


def _kernel_loop():
    """The kernel's loop, made (again, if user code closed it) on demand."""
    global _loop
    if _loop is None or _loop.is_closed():
        import asyncio

        from IPython.core import async_helpers

        class KernelEventLoop(asyncio.SelectorEventLoop):
            _in_cell = False  # a synchronous cell runs: the loop is blocked, not stopped

            def is_running(self):
                return self._in_cell or super().is_running()

        _loop = KernelEventLoop()
        asyncio.set_event_loop(_loop)
        async_helpers._asyncio_event_loop = _loop  # what IPython's `await` runner uses
    return _loop


def _install_loop():
    import asyncio.events as events

    from IPython.core import interactiveshell

    plain = interactiveshell._pseudo_sync_runner

    def sync_cell_runner(coro):
        """IPython's runner for cells without top-level await, with the loop marked running
        (and restored after, for a cell that runs cells)."""
        loop = _kernel_loop()
        outer = (loop._in_cell, events._get_running_loop())
        loop._in_cell = True
        events._set_running_loop(loop)
        try:
            return plain(coro)
        finally:
            loop._in_cell = outer[0]
            events._set_running_loop(outer[1])

    interactiveshell._pseudo_sync_runner = sync_cell_runner
    _kernel_loop()


def loop_state():
    """Between requests (C): (fd, timeout_ms). fd: the loop's selector, readable once a fd the
    loop watches is (-1: no loop); timeout_ms: 0 if callbacks are ready, else until the
    earliest timer, -1 without one. Reads the loop's queues (BaseEventLoop's `_ready`,
    `_scheduled`, `_selector`): asyncio has no public way to ask whether a loop has work."""
    loop = _loop
    if loop is None or loop.is_closed():
        return (-1, -1)
    fd = loop._selector.fileno()
    if loop._ready:
        return (fd, 0)
    if not loop._scheduled:
        return (fd, -1)
    left = loop._scheduled[0].when() - loop.time()  # a heap: the earliest first
    return (fd, 0 if left <= 0 else int(min(left, 3600.0) * 1000) + 1)  # an int for poll()


def _ignore_sigint(signum, frame):
    pass


def run_loop_once():
    """One pass of the loop between requests: the events its selector has (without waiting),
    then the callbacks due (`stop()` before `run_forever()` does exactly that).
    An interrupt meanwhile does nothing, as in ipykernel outside a request: it may be late for
    the cell it was meant for, and must not kill a background task instead. (A handler that
    does nothing rather than SIG_IGN, which processes the tasks start would inherit.)"""
    loop = _loop
    if loop is None or loop.is_closed():
        return
    # _signal, not signal: its wrappers' enum conversions were a third of a pass's cost
    old = _signal.signal(_signal.SIGINT, _ignore_sigint)
    try:
        loop.stop()
        loop.run_forever()
    except BaseException:  # SystemExit or KeyboardInterrupt raised by a callback
        import traceback

        traceback.print_exc()
    finally:
        _signal.signal(_signal.SIGINT, old if old is not None else _signal.default_int_handler)


def init(connection_file=""):
    """Called once by C, before the first request."""
    global shell
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # fd 1 and 2 are pipes to iopub: line buffering, so output flows while a cell runs and
    # a print costs one write(2).
    for s in (sys.stdout, sys.stderr):
        try:
            s.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=True)
        except Exception:
            pass
    _lazy_ipython_package()
    shell = _make_shell()
    shell.kernel = kernel
    kernel.shell = shell
    _kernel_magics(shell)
    _install_fast_paths(shell)
    _install_loop()
    if connection_file:
        # What ipykernel's application leaves in the shell's config, and what libraries read
        # to tell a notebook kernel from a terminal (`'IPKernelApp' in get_ipython().config`:
        # tqdm.autonotebook, transformers, plotly's renderer choice...).
        shell.config.IPKernelApp.connection_file = connection_file
    if "" not in sys.path:
        sys.path.insert(0, "")  # import from the working directory, as ipykernel does
    sys.meta_path.insert(0, _IpykernelCommAlias())
    builtins.input = _kbox.input
    import getpass

    getpass.getpass = _kbox.getpass
    return shell


def run(code, silent, store_history):
    """Runs one cell. Returns (execution_count, payload) on success, or
    (execution_count, payload, ename, evalue, traceback) on error."""
    # A handler a previous cell set for SIGINT (SIG_IGN would make every later cell
    # uninterruptible, SIG_DFL would let an interrupt kill the kernel) is replaced before each
    # cell by Python's own, as ipykernel does, so an interrupt is a KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    res = shell.run_cell(code, store_history=store_history, silent=silent)
    count = shell.execution_count - 1
    pm = shell.payload_manager
    payload = pm.read_payload()
    if payload:
        pm.clear_payload()
    else:
        payload = None
    if res.success:
        return (count, payload)
    err = res.error_before_exec if res.error_before_exec is not None else res.error_in_exec
    return (count, payload, _safe_str(type(err).__name__), _safe_str(err),
            shell._last_traceback or [])


def user_expressions(expressions):
    return shell.user_expressions(expressions)


def complete(code, cursor_pos):
    from IPython.core.completer import provisionalcompleter, rectify_completions

    if cursor_pos is None:
        cursor_pos = len(code)
    with provisionalcompleter():
        completions = list(rectify_completions(code, shell.Completer.completions(code,
                                                                                 cursor_pos)))
    comps = [dict(start=c.start, end=c.end, text=c.text, type=c.type, signature=c.signature)
             for c in completions]
    if completions:
        start, end = completions[0].start, completions[0].end
    else:
        start = end = cursor_pos
    return {"matches": [c.text for c in completions], "cursor_start": start, "cursor_end": end,
            "metadata": {"_jupyter_types_experimental": comps}, "status": "ok"}


def inspect(code, cursor_pos, detail_level=0, omit_sections=()):
    from IPython.utils.tokenutil import token_at_cursor

    if cursor_pos is None:
        cursor_pos = len(code)
    name = token_at_cursor(code, cursor_pos)
    reply = {"status": "ok", "data": {}, "metadata": {}, "found": False}
    try:
        bundle = shell.object_inspect_mime(name, detail_level=detail_level,
                                           omit_sections=set(omit_sections or ()))
        reply["data"].update(bundle)
        if not shell.enable_html_pager:
            reply["data"].pop("text/html", None)
        reply["found"] = True
    except KeyError:
        pass
    return reply


def is_complete(code):
    status, indent = shell.input_transformer_manager.check_complete(code)
    reply = {"status": status}
    if status == "incomplete":
        reply["indent"] = " " * (indent or 0)
    return reply


def history(hist_access_type=None, output=False, raw=True, session=0, start=0, stop=None,
            n=None, pattern=None, unique=False, search_raw=True, **_):
    """tail, range and search over this kernel's in-memory history (IPython's semantics;
    there are no earlier sessions)."""
    import fnmatch

    hm = shell.history_manager
    inputs = hm.input_hist_raw if raw else hm.input_hist_parsed
    outputs = hm.output_hist_reprs
    count = len(inputs)  # inputs[0] is IPython's empty placeholder

    def entry(i):
        return (SESSION, i, (inputs[i], outputs.get(i)) if output else inputs[i])

    if hist_access_type == "tail":
        n = 10 if n is None else max(0, int(n))
        lines = range(max(1, count - n), count)
    elif hist_access_type == "range":
        session = int(session or 0)
        # 0 is this session, a negative number one before it (there are none), a positive one
        # a session by number (ours is SESSION).
        if session != 0 and session != SESSION:
            lines = range(0)
        else:
            start = int(start or 0)
            stop = None if stop is None else int(stop)
            if start < 0:
                start += count
            if not stop or stop > count:
                stop = count
            elif stop < 0:
                stop += count
            lines = range(max(0, start), stop)
    elif hist_access_type == "search":
        pattern = "*" if pattern is None else pattern
        search = hm.input_hist_raw if search_raw else hm.input_hist_parsed
        found, seen = [], set()
        for i in range(count - 1, 0, -1):
            if not fnmatch.fnmatchcase(search[i], pattern):
                continue
            if unique:
                if search[i] in seen:
                    continue
                seen.add(search[i])
            found.append(i)
            if n is not None and len(found) >= int(n):
                break
        lines = reversed(found)
    else:
        lines = range(0)
    return {"status": "ok", "history": [entry(i) for i in lines]}


def at_exit():
    """Shutdown: what a normal interpreter exit runs."""
    import atexit

    atexit._run_exitfuncs()
