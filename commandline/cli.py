"""What every command-line entry point shares: one flag system (absl) and one error shape.

A program (`pipeline.preprocess`, `keras_metamae.train`, `.evaluate`, `.export`, `.reproduce`)
is a module with `define_flags(flag_values)` and `main(invocation)`, started by
`run_program(module)`:

- An unknown or misspelt flag, a bad flag value, a positional argument, or anything after `--`
  is an error, except in a program that declares a pass-through (`PASSTHROUGH`: preprocess hands
  what follows `--` to Beam's PipelineOptions). A flag that was renamed says what it became.
- Every expected user error is one line on stderr and exit status 2:

      error: <what> (<flag or path>): <what to do>

  raised anywhere as `UserError`. Anything else is a bug: a traceback and status 1.
- `--help` (the program's flags) and `--helpfull` (also absl's own) print and exit 0.
- `--dry_run` (alias `--print_config`) is defined for every program: it prints what the command
  would do (the resolved config, inputs and outputs) and exits 0 without writing anything.

Path flags go through `storage_path` (absolute, so that a workdir's config.json stays valid from
any directory; a URL such as `gs://bucket/x` as it is, its scheme checked), or `local_path`
where only a local file system will do (raw data), and output folders through `check_writable`
before anything is computed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import tempfile
from typing import Any, Callable, NoReturn

from absl import app, flags
from absl import logging as absl_logging

from commandline import filesystem, native_logs

EXIT_USER_ERROR = 2
PASSTHROUGH_SEPARATOR = "--"
HELP_ARGS = ("-h", "-?", "--help", "-help", "--helpshort", "-helpshort")
HELPFULL_ARGS = ("--helpfull", "-helpfull")
# A message already in the shape `<what> (<where>): <what to do>`.
_SHAPED = re.compile(r"^(?P<what>.+?) \((?P<where>[^()]+)\): (?P<todo>.+)$")
# "--flag: message" or "--flag=value: message".
_FLAG_MESSAGE = re.compile(r"^(?P<flag>--[\w-]+)(?:=(?P<value>\S+))?: (?P<message>.+)$")
# absl's IllegalFlagValueError: "flag --steps=abc: <reason>".
_ABSL_BAD_VALUE = re.compile(r"^flag --(?P<name>[\w-]+)=(?P<value>.*?): (?P<reason>.*)$", re.S)


class UserError(ValueError):
    """An expected user error: reported as `error: <what> (<where>): <todo>`, exit status 2.

    `where` names the flag (with its value) or the path at fault; `todo` says what to do.
    `details` (optional) are further lines printed below, e.g. a list of missing files.
    """

    def __init__(self, what: str, where: str, todo: str, details: str = ""):
        self.what, self.where, self.todo, self.details = what, where, todo, details
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.what} ({self.where}): {self.todo}"

    def report(self) -> str:
        return f"error: {self}" + (f"\n{self.details}" if self.details else "")

    @classmethod
    def wrap(cls, error: BaseException | str, where: str, todo: str) -> "UserError":
        """A UserError from another exception's message: kept as it is when it already has the
        shape, otherwise its first line becomes `what`, at `where`, with `todo`; further lines
        become `details`."""
        if isinstance(error, UserError):
            return error
        text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        first, _, rest = str(text).strip().partition("\n")
        shaped = _SHAPED.match(first)
        if shaped:
            return cls(shaped["what"], shaped["where"], shaped["todo"], rest)
        # "--steps: got 0, expected >= 1" (config and reader checks): the flag is the place.
        flagged = _FLAG_MESSAGE.match(first)
        if flagged:
            what, sep, expected = flagged["message"].partition(", expected ")
            if not sep and what.startswith("expected "):
                what, expected = f"invalid value {flagged['value'] or ''}".strip(), what[9:]
            elif what.startswith("got "):
                what = f"invalid value {what[4:]}"
            return cls(what, flagged["flag"], f"expected {expected}" if expected else todo, rest)
        return cls(first.rstrip(" .;:"), where, todo, rest)


@dataclasses.dataclass
class Invocation:
    """What `main` gets: the command line as typed and what followed `--` (pass-through)."""

    program: str  # e.g. "python -m pipeline.preprocess"
    argv: list[str]  # without the program name
    passthrough: list[str]

    @property
    def command(self) -> str:
        import shlex

        return f"{self.program} {shlex.join(self.argv)}".rstrip()


# === flags shared by every program ===
def define_common_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_bool("dry_run", False, "Print what this command would do (the resolved config, "
                      "its inputs and outputs) and exit without writing anything.",
                      flag_values=flag_values)
    flags.DEFINE_alias("print_config", "dry_run", flag_values=flag_values)
    flags.DEFINE_bool("verbose", False, "Also show TensorFlow's native (C++) log lines and "
                      "INFO logs, hidden by default (commandline/native_logs.py).",
                      flag_values=flag_values)


def quiet_tensorflow_logs() -> None:
    """TF/Keras log every SavedModel signature and dataset op at INFO through absl; keep the
    console to progress, results and warnings unless the user asked for --verbosity."""
    if not _wants_logs():
        absl_logging.set_verbosity(absl_logging.WARNING)


def _wants_logs() -> bool:
    """--verbose, or absl's --verbosity given."""
    return bool(flags.FLAGS["verbosity"].present
                or ("verbose" in flags.FLAGS and flags.FLAGS.verbose))


# === paths ===
def local_path(value: str | None, flag: str) -> str | None:
    """`value` as an absolute local path (None stays None), for flags whose readers need a
    local file system (raw data); `storage_path` for those that also take a URL.

    Absolute so that what a run records (config.json) means the same from any directory.
    URLs (`gs://`, `s3://`, ...) are refused (they would otherwise create a local folder named
    `gs:`).
    """
    if value is None:
        return None
    scheme = filesystem.scheme(value)
    if scheme:
        raise UserError(f"{scheme}:// paths are not supported here", f"{flag} {value}",
                        "pass a local or mounted folder (e.g. a bucket mounted with gcsfuse); "
                        "these files are read through the local file system")
    return storage_path(value, flag)


def storage_path(value: str | None, flag: str) -> str | None:
    """`value` as an absolute local path, or a URL of a scheme TensorFlow's file system knows
    (`gs://bucket/folder`; None stays None). Another scheme is a UserError naming the flag."""
    if value is None:
        return None
    if not value:
        raise UserError("empty path", flag, f"pass a folder, e.g. {flag}=some/folder")
    scheme = filesystem.scheme(value)
    if scheme is not None and scheme not in filesystem.known_schemes():
        raise UserError(f"{scheme}:// paths are not supported", f"{flag} {value}",
                        f"pass a local folder or a URL of one of: "
                        f"{', '.join(s + '://' for s in filesystem.known_schemes())}")
    return filesystem.absolute(value)


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable(path: str, flag: str) -> None:
    """Raises UserError unless folder `path` exists and takes new files, or can be created.

    Checked by creating and removing a file in `path` or its nearest existing ancestor (for a
    URL: an object under `path`), so nothing is left behind whatever the answer (and root, for
    whom os.access always says yes, gets the real answer of a read-only mount).
    """
    where = f"{flag} {path}" if flag else path
    if filesystem.is_url(path):
        probe = f"{path.rstrip('/')}/.write-check-{os.getpid()}"
        try:
            filesystem.write_object(probe, b"")
            filesystem.remove(probe)
        except Exception as e:  # tf.errors.*: no bucket, no permission, unreachable
            first = str(e).strip().split("\n")[0]
            raise UserError(f"cannot write in {path}: {first}", where,
                            "pass a bucket and folder you can write to (and check the "
                            "credentials: gcloud auth application-default login)") from None
        return
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise UserError(f"{existing} is a file, not a folder", where,
                        "pass a folder that can be created there, or move that file away")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write in {existing}: {e.strerror or e}", where,
                        "pass a folder you can write to, or fix its permissions") from None


def make_dirs(path: str) -> list[str]:
    """`os.makedirs(path, exist_ok=True)`; returns the folders it created, outermost first,
    for `remove_if_empty` to take back after a failure. A URL needs none (an object store has
    no folders, only name prefixes)."""
    if filesystem.is_url(path):
        return []
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if missing:
        os.makedirs(missing[0], exist_ok=True)
    return missing[::-1]


def remove_if_empty(folders: list[str]) -> None:
    """Removes the folders `make_dirs` created (innermost first) that are still empty."""
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty (or gone): neither are the ones outside it


# === parsing ===
def _program_name(program) -> str:
    """How the user started `program`: `python -m keras_metamae.train` also when it runs as
    __main__."""
    spec = getattr(program, "__spec__", None)
    name = spec.name if spec is not None and spec.name else program.__name__
    return f"python -m {name}"


def _suggestion(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"did you mean --{close[0]}? " if close else ""


def _flag_value_error(error: flags.Error, flag_values: flags.FlagValues) -> UserError:
    message = str(error)
    bad = _ABSL_BAD_VALUE.match(message)
    if bad:
        name, value, reason = bad["name"], bad["value"], " ".join(bad["reason"].split())
        if "must have a value other than None" in reason:
            return UserError("missing required flag", f"--{name}",
                             f"pass --{name}=... (`--help` describes it)")
        flag = flag_values[name] if name in flag_values else None
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            flag.flag_type() if flag is not None else "", None)
        if flag is not None and getattr(flag.parser, "enum_values", None):
            expected = "one of " + ", ".join(flag.parser.enum_values)
        return UserError(f"invalid value {value!r}", f"--{name}",
                         f"expected {expected}" if expected else reason)
    missing = re.match(r"^Missing value for flag (--[\w-]+)", message)
    if missing:
        return UserError("missing value", missing.group(1), f"give it one: {missing.group(1)}=VALUE")
    return UserError(" ".join(message.split()), "command line", "see --help")


def parse_command_line(flag_values: flags.FlagValues, argv: list[str], *, program: str,
                       renamed: dict[str, str] | None = None,
                       passthrough: str | None = None,
                       is_passthrough_option: Callable[[str], bool] | None = None,
                       passthrough_takes_value: Callable[[str], bool] | None = None,
                       optional_values: dict[str, str] | None = None) -> Invocation:
    """Parses `argv` (without the program name) into `flag_values`, resetting every flag first.

    `renamed`: old flag name -> what to say instead (an old spelling is an error naming its
    new one, never silently something else). `passthrough`: what the arguments after `--` are
    (None: the program takes none). A flag that `is_passthrough_option(name)` recognises may
    also come before `--`, mixed with the program's own (as Beam's examples take pipeline
    options): it is moved after `--`, with its value when `passthrough_takes_value(name)` and
    it is not written `--name=value`. `optional_values`: flag name -> the value it has when
    written alone (`--list` is `--list=all`, `--list eurosat` is `--list=eurosat`). Raises
    UserError.
    """
    argv = list(argv)
    if PASSTHROUGH_SEPARATOR in argv:
        cut = argv.index(PASSTHROUGH_SEPARATOR)
        own, rest = argv[:cut], argv[cut + 1:]
    else:
        own, rest = argv, []
    own = _fill_optional_values(own, optional_values or {})
    if rest and passthrough is None:
        raise UserError(f"unexpected arguments after `--`: {' '.join(rest)}", "--",
                        f"{program} takes only its own --flags (`--help` lists them)")
    moved: list[str] = []
    while True:
        flag_values.unparse_flags()
        try:
            leftover = flag_values([program] + own)[1:]
            break
        except flags.UnrecognizedFlagError as e:
            name = e.flagname
            if passthrough and is_passthrough_option and is_passthrough_option(name):
                own, taken = _take_option(own, name, passthrough_takes_value)
                moved += taken
                continue
            _raise_unknown_flag(name, flag_values, renamed)
        except flags.Error as e:
            raise _flag_value_error(e, flag_values) from None
    rest = moved + rest
    if leftover:
        after = f"; {passthrough} go after `--`" if passthrough else ""
        raise UserError(f"unexpected argument {leftover[0]!r}", leftover[0],
                        f"{program} takes only --flags{after} (`--help` lists them)")
    return Invocation(program=program, argv=argv, passthrough=rest)


def _fill_optional_values(args: list[str], optional_values: dict[str, str]) -> list[str]:
    filled, i = [], 0
    while i < len(args):
        name = args[i].lstrip("-")
        if args[i].startswith("-") and name in optional_values:
            following = args[i + 1] if i + 1 < len(args) else None
            if following is not None and not following.startswith("-"):
                filled.append(f"--{name}={following}")
                i += 2
                continue
            filled.append(f"--{name}={optional_values[name]}")
        else:
            filled.append(args[i])
        i += 1
    return filled


def _take_option(args: list[str], name: str, takes_value: Callable[[str], bool] | None
                 ) -> tuple[list[str], list[str]]:
    """(`args` without the option `--name`, the option's own tokens): `--name=value`, `--name
    value` (when it takes a value) or the switch `--name`."""
    for i, arg in enumerate(args):
        flag = arg.lstrip("-")
        if arg.startswith("-") and (flag == name or flag.startswith(f"{name}=")):
            end = i + 1
            if "=" not in flag and takes_value and takes_value(name):
                if end >= len(args):
                    raise UserError("missing value", f"--{name}", f"give it one: --{name}=VALUE")
                end += 1
            return args[:i] + args[end:], [f"--{flag}"] + args[i + 1:end]
    raise UserError("unknown flag", f"--{name}", "`--help` lists the flags")


def _raise_unknown_flag(name: str, flag_values: flags.FlagValues,
                        renamed: dict[str, str] | None) -> NoReturn:
    if renamed and name in renamed:
        raise UserError(f"--{name} was renamed", f"--{name}", renamed[name]) from None
    if name.startswith("no") and renamed and name[2:] in renamed:
        raise UserError(f"--{name[2:]} was renamed", f"--{name}", renamed[name[2:]]) from None
    raise UserError("unknown flag", f"--{name}", _suggestion(name, sorted(flag_values))
                    + "`--help` lists the flags") from None


def help_text(program, full: bool = False) -> str:
    """The program's docstring and its flags (`full`: also absl's own, e.g. --verbosity)."""
    fresh = flags.FlagValues()
    program.define_flags(fresh)
    define_common_flags(fresh)
    text = (program.__doc__ or "").strip() + "\n\nflags:\n"
    text += (fresh.get_help(include_special_flags=False)
             .replace("\n__main__:\n", "\n")
             .replace(f"\n{__name__}:\n", "\nevery command:\n"))
    if full:
        for module in sorted(flags.FLAGS.flags_by_module_dict()):
            if module.startswith("absl."):
                text += "\n" + flags.FLAGS.module_help(module)
    return text.rstrip() + "\n"


# === running a program ===
# The program whose flags are defined in the global FLAGS, and their names: running another
# program in the same process (tests) swaps them.
_active: dict[str, Any] = {"program": None, "names": set()}


def use_flags_of(program) -> None:
    """Defines `program`'s flags (and the common ones) in the global FLAGS, first removing those
    of a program run before it in this process."""
    if _active["program"] is program:
        return
    for name in _active["names"]:
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    before = set(flags.FLAGS)
    program.define_flags(flags.FLAGS)
    define_common_flags(flags.FLAGS)
    _active.update(program=program, names=set(flags.FLAGS) - before)


def _parser_for(program) -> Callable[[list[str]], Invocation]:
    name = _program_name(program)

    def parse(argv: list[str]) -> Invocation:
        own = argv[1:]
        own_flags = own[:own.index(PASSTHROUGH_SEPARATOR)] if PASSTHROUGH_SEPARATOR in own else own
        if any(arg in HELP_ARGS + HELPFULL_ARGS for arg in own_flags):
            sys.stdout.write(help_text(program, full=any(a in HELPFULL_ARGS for a in own_flags)))
            sys.exit(0)
        try:
            return parse_command_line(
                flags.FLAGS, own, program=name, renamed=getattr(program, "RENAMED_FLAGS", None),
                passthrough=getattr(program, "PASSTHROUGH", None),
                is_passthrough_option=getattr(program, "is_passthrough_option", None),
                passthrough_takes_value=getattr(program, "passthrough_takes_value", None),
                optional_values=getattr(program, "OPTIONAL_VALUES", None))
        except UserError as e:
            exit_with(e)

    return parse


def exit_with(error: UserError) -> NoReturn:
    sys.stdout.flush()
    print(error.report(), file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run_program(program, argv: list[str] | None = None) -> NoReturn:
    """Runs `program` as a command (`argv` with the program name; default sys.argv) through
    absl's app.run, with this module's parser; exits with main's status (None: 0), 2 on a
    UserError."""
    use_flags_of(program)

    def main(invocation: Invocation):
        if not _wants_logs():
            native_logs.hide_native_startup_logs()
        quiet_tensorflow_logs()
        try:
            return program.main(invocation)
        except UserError as e:
            exit_with(e)

    app.run(main, argv=sys.argv if argv is None else argv, flags_parser=_parser_for(program))


def call_program(program, argv: list[str]) -> int:
    """`run_program` in this process, returning the exit status instead of exiting (tests)."""
    try:
        run_program(program, [_program_name(program)] + list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
