"""The glue's shortcut through IPython's static input transformation must give exactly what
IPython's TransformerManager gives for every cell it accepts (kernel-host/pyglue.py,
_install_fast_paths). Checked on hand-picked cells and on random ones built from the
characters that matter. Runs the glue in this process with a stand-in for the C module."""
import os
import random
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "kernel-host"))


def glue():
    fake = types.ModuleType("_kbox")
    for n in ("execute_result", "display_data", "clear_output", "error", "comm_publish"):
        setattr(fake, n, lambda *a: None)
    fake.input = input
    fake.getpass = lambda *a, **k: ""
    sys.modules["_kbox"] = fake
    import pyglue
    if pyglue.shell is None:
        pyglue.init()
    return pyglue


CELLS = ["x += 1; print(x)", "x = 1\ny = 2", "  indented\n  more", "\n\nx=1",
         "def f():\n    return 1\n", "a = %time 1", "!ls", "x?", ">>> 1\n... 2", "In [1]: x",
         "f(a\n  , b)", "  ...: x", "/f 1", ";f a", ",f a b", "x = 'a%b'", "s = '...'", "\tx",
         "x\r\ny", "x\x0cy", "", "\n", " ", "print('hi')\n", "x = [1,\n2]\n\n\n", "%%time\nx=1",
         "a = !ls", "b = %who_ls", "exit", "ls", "[nav] In [2]: x", "\n  x = 1"]


def test_transform_matches_ipython():
    pyglue = glue()
    from IPython.core.inputtransformer2 import TransformerManager
    fast = pyglue.shell.input_transformer_manager.transform_cell
    ref = TransformerManager().transform_cell
    alphabet = list("ab =+1\n\t ;,/()%!?.'\">[]In:#\r\\")
    rnd = random.Random(7)
    cells = CELLS + ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16)))
                     for _ in range(20000)]
    for c in cells:
        try:
            want = ref(c)
        except Exception as e:
            want = type(e)
        try:
            got = fast(c)
        except Exception as e:
            got = type(e)
        assert got == want, repr(c)


def test_custom_transformers_disable_the_shortcut():
    pyglue = glue()
    shell = pyglue.shell
    shell.input_transformers_cleanup.append(lambda lines: [l.replace("XX", "1") for l in lines])
    try:
        assert shell.input_transformer_manager.transform_cell("a = XX") == "a = 1\n"
    finally:
        shell.input_transformers_cleanup.pop()
    assert shell.input_transformer_manager.transform_cell("a = XX") == "a = XX\n"


def test_should_run_async():
    pyglue = glue()
    shell = pyglue.shell
    assert shell.should_run_async("x = 1", transformed_cell="x = 1\n") is False
    assert shell.should_run_async("await f()", transformed_cell="await f()\n") is True
    assert shell.should_run_async("async def f(): pass",
                                  transformed_cell="async def f(): pass\n") is False


def test_shell_transform_matches_ipython():
    """The whole of the shell's transform (static transforms, then the prefilter of a
    single-line cell) against IPython's own method on the same shell, in states that make
    each prefilter checker fire: macros, autocallables, names of line magics shadowed or not
    by variables, autocall on, automagic off, every checker enabled, a checker and handler
    added by user code, the normal handler replaced."""
    pyglue = glue()
    shell = pyglue.shell
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.macro import Macro

    def ref(cell):
        return InteractiveShell.transform_cell(shell, cell)

    words = ["x", "ls", "pwd", "cd", "exit", "quit", "mac", "f", "time", "who", "a.b", "pwd.x",
             "get_ipython", "_", "history", "alias", "env", "run"]
    rests = ["", " 1", " = 2", "(1)", " +1", ", b = 1, 2", " foo bar", ".y", "\n", "  ",
             " # PYTHON-MODE", "; x", " -l", "'s'", " x\ny", "\r\nz"]
    rnd = random.Random(11)
    cells = [w + r for w in words for r in rests] + ["", " ", "\n", "# PYTHON-MODE", "1+1"]
    cells += ["".join(rnd.choice(words + rests + ["%", "!", "?"]) for _ in range(rnd.randint(1, 4)))
              for _ in range(3000)]
    from IPython.core.prefilter import PrefilterChecker, PrefilterHandler, PrefilterTransformer
    from traitlets import Integer, Unicode

    pm = shell.prefilter_manager

    class Shout(PrefilterChecker):  # a checker of user code's: lines starting with x
        priority = Integer(50)

        def check(self, line_info):
            return pm.get_handler_by_name("shout") if line_info.ifun == "x" else None

    class ShoutHandler(PrefilterHandler):
        handler_name = Unicode("shout")

        def handle(self, line_info):
            return line_info.line.upper()

    class LoudNormal(PrefilterHandler):  # the normal handler replaced
        handler_name = Unicode("normal")

        def handle(self, line_info):
            return line_info.line + "  # seen"

    class Tilde(PrefilterTransformer):  # a line transformer of user code's
        def transform(self, line, continue_prompt):
            return line.replace("pwd", "~")

    def add_shout():
        ShoutHandler(shell=shell, prefilter_manager=pm)
        Shout(shell=shell, prefilter_manager=pm)

    states = [
        ("default", lambda: None),
        ("macros and shadowing names", lambda: shell.user_ns.update(
            mac=Macro("x = 1\n"), f=print, ls=1, pwd="shadowed", cd=Macro("y = 2\n"))),
        ("autocall on", lambda: setattr(shell, "autocall", 1)),
        ("automagic off", lambda: setattr(shell, "automagic", False)),
        ("every checker enabled",
         lambda: [setattr(c, "enabled", True) for c in pm.checkers]),
        ("a checker of user code's", add_shout),
        ("normal handler replaced", lambda: LoudNormal(shell=shell, prefilter_manager=pm)),
        ("a prefilter transformer", lambda: Tilde(shell=shell, prefilter_manager=pm)),
        ("a post-input transformer",
         lambda: shell.input_transformers_post.append(lambda ls: [l.upper() for l in ls])),
    ]
    saved_ns = dict(shell.user_ns)
    saved_checkers = list(pm.checkers)
    saved_enabled = [c.enabled for c in pm.checkers]
    saved_handlers = dict(pm._handlers)
    saved_transformers = list(pm.transformers)

    def restore():
        shell.autocall = 0
        shell.automagic = True
        pm._checkers[:] = saved_checkers
        for c, e in zip(saved_checkers, saved_enabled):
            c.enabled = e
        pm._handlers.clear()
        pm._handlers.update(saved_handlers)
        pm._transformers[:] = saved_transformers
        shell.input_transformers_post.clear()
        shell.user_ns.clear()
        shell.user_ns.update(saved_ns)

    unset = object()
    try:
        for name, state in states:
            restore()
            state()
            for c in cells:
                res = []
                for transform in (ref, shell.transform_cell):
                    shell._last_input_line = unset
                    try:
                        out = transform(c)
                    except Exception as e:
                        out = type(e)
                    res.append((out, shell._last_input_line))
                assert res[1] == res[0], (name, repr(c))
    finally:
        restore()


def test_first_word_matches_split_user_input():
    pyglue = glue()
    from IPython.core.splitinput import split_user_input
    alphabet = list("ab_1 .*%!?,;/=(\t\x0c\u00a0\u2003é") + ["ls", "%%", "!!", "??"]
    rnd = random.Random(5)
    lines = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
             for _ in range(20000)]
    for line in lines:
        assert pyglue.first_word(line) == split_user_input(line)[2], repr(line)
