"""How much a reader of one training step and one evaluation meets outside train.py: the names from other project
modules on that path, where they are defined, and the lines behind them.

    python tests/reading_path.py            # this checkout
    python tests/reading_path.py OLD_DIR    # another checkout of the project, measured the same way

The path: the body of the training loop (the `while` of train.py's run) and every train.py function it calls,
followed through train.py only; the whole run is the same from train.py's main. On it, a name counts once when it is
  - a function, class or constant imported from another top-level module of the project (module.name included),
  - a method or property of a project class called on an object (ranks.mean(...), state.record_eval(...)), except
    the ones that only implement torch's own interfaces (an optimizer's step and zero_grad, a module's train and
    eval, state_dict): those read as torch's,
  - the model itself, called as model(x, y): model.GPT.forward.
"Behind" adds the project names those definitions use in turn (followed through every module): what a reader who
opens each one would meet. The lines are the definitions' own (a class counted through a method: that method's).
"""

import ast
import sys
from pathlib import Path

TORCH_INTERFACE = {"step", "zero_grad", "state_dict", "load_state_dict", "train", "eval", "parameters", "forward",
                   "__init__", "__enter__", "__exit__", "__call__", "__len__"}


def module_defs(root: Path) -> dict:
    """{module: {name: node}} for every top-level module's functions, classes and assigned constants, and
    {"method": {name: [(module, class, node)]}} for the methods and properties of its classes."""
    defs, methods = {}, {}
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names[node.name] = node
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        names[target.id] = node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        methods.setdefault(item.name, []).append((path.stem, node.name, item))
        defs[path.stem] = (names, tree)
    return defs, methods


def imports_of(tree: ast.Module, project: set) -> tuple[dict, set]:
    """({local name: (module, name)} for `from module import name`, {module} for `import module`), project only."""
    names, modules = {}, set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module in project:
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names if alias.name in project}
    return names, modules


def local_names(nodes) -> set:
    """The names the functions among nodes bind themselves (parameters, assignments): not the module's."""
    bound = set()
    for node in nodes:
        if isinstance(node, ast.FunctionDef):
            bound |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
            bound |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return bound


def references(body, module: str, defs: dict, methods: dict, local_ok: bool) -> set:
    """(module, name) of every project name the nodes in body use; local_ok also counts the module's own names."""
    own, tree = defs[module]
    imported, modules = imports_of(tree, set(defs))
    bound = local_names(body)
    found = set()
    for node in ast.walk(ast.Module(body=list(body), type_ignores=[])):
        if isinstance(node, ast.Name) and node.id in bound:
            continue
        if isinstance(node, ast.Name):
            if node.id in imported:
                found.add(imported[node.id])
            elif local_ok and node.id in own:
                found.add((module, node.id))
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                found.add((node.value.id, node.attr))
            elif node.attr in methods and node.attr not in TORCH_INTERFACE:
                for owner, cls, _ in methods[node.attr]:
                    found.add((owner, f"{cls}.{node.attr}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.endswith("model"):
            found.add(("model", "GPT.forward"))
    return found


def definition(defs: dict, methods: dict, module: str, name: str):
    own, _ = defs[module]
    if "." in name:
        cls, method = name.split(".")
        return next((node for owner, c, node in methods.get(method, []) if owner == module and c == cls), None)
    return own.get(name)


def train_path(defs: dict, whole_run: bool) -> list:
    """The nodes of the path in train.py: the loop's body (or with whole_run, main), and the train.py functions
    reached from it."""
    own, tree = defs["train"]
    loop = next(node for node in ast.walk(tree) if isinstance(node, ast.While))
    start = [own["main"]] if whole_run else list(loop.body)
    body, queue, seen = list(start), list(start), set()
    while queue:
        node = queue.pop()
        bound = local_names([node])
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in own and sub.id not in seen and sub.id not in bound \
                    and isinstance(own[sub.id], ast.FunctionDef):
                seen.add(sub.id)
                body.append(own[sub.id])
                queue.append(own[sub.id])
    return body, sorted(seen)


def measure(root: Path, whole_run: bool = False) -> dict:
    defs, methods = module_defs(root)
    body, local = train_path(defs, whole_run)
    direct = {ref for ref in references(body, "train", defs, methods, local_ok=False) if ref[0] != "train"}
    behind, queue = set(direct), list(direct)
    while queue:
        module, name = queue.pop()
        node = definition(defs, methods, module, name)
        if node is None or isinstance(node, ast.Assign):
            continue
        inner = node.body if isinstance(node, ast.FunctionDef) else [node]
        for ref in references(inner, module, defs, methods, local_ok=True):
            if ref not in behind and ref[0] != "train" and ref != (module, name):
                behind.add(ref)
                queue.append(ref)

    def lines(refs):
        total = 0
        for module, name in refs:
            node = definition(defs, methods, module, name)
            total += 0 if node is None else node.end_lineno - node.lineno + 1
        return total
    return {"train_functions": local, "direct": sorted(direct), "direct_lines": lines(direct),
            "direct_modules": sorted({m for m, _ in direct}), "behind": sorted(behind), "behind_lines": lines(behind),
            "behind_modules": sorted({m for m, _ in behind})}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    for whole_run in (False, True):
        m = measure(root, whole_run)
        print(f"{root}: {'main' if whole_run else 'the loop'} and {', '.join(m['train_functions'])} (train.py)")
        print(f"  on the path: {len(m['direct'])} names from {len(m['direct_modules'])} other modules "
              f"({', '.join(m['direct_modules'])}), {m['direct_lines']} lines")
        if not whole_run:
            for module, name in m["direct"]:
                print(f"    {module}.{name}")
        print(f"  with what those use in turn: {len(m['behind'])} names from {len(m['behind_modules'])} modules, "
              f"{m['behind_lines']} lines")


if __name__ == "__main__":
    main()
