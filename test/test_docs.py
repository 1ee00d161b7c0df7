"""The repository stands alone: every document its code, YAML and Markdown cite is in the repository.

A citation is a path ending in ``.md`` (``docs/spec/CKD.md``, ``ckd_train/README.md``, a bare ``CKD.md``)
or a path under ``doc/`` or ``docs/``. It resolves when it names a file or folder inside the repository:
relative to the citing file, to the repository root, or to ``docs/``. A citation without ``..`` may also
be the tail of a repository path (``CKD.md``, ``spec/CKD.md`` -> ``docs/spec/CKD.md``). Nothing may cite
the shared folder beside the repository (``../shared``): tests and readers never have it.
"""
import os
import re
from pathlib import Path

from conftest import REPO_ROOT

SCANNED_SUFFIXES = ('.py', '.yaml', '.yml', '.md')
# build outputs, environments and run outputs: not the repository's own text
SKIPPED_DIRS = {'.git', '.venv', 'build', 'install', 'log', 'demo_output', 'output', '.stamps', '__pycache__',
                '.pytest_cache', '.hypothesis', 'node_modules'}
# Markdown files the package writes (reports of ckd-eval and make demo), named in code and docs as outputs
WRITTEN_NAMES = {'metrics.md', 'summary.md', 'comparison.md'}

# a path ending in .md, not inside a longer path or URL (nothing path-like right before it)
MD_PATH = re.compile(r'(?<![\w./-])((?:[\w.-]+/)*[\w.-]*\w\.md)\b')
# a path under doc/ or docs/
DOC_DIR_PATH = re.compile(r'(?<![\w./-])(docs?/[\w./-]*\w)')
SHARED = re.compile(r'\.\./shared\b[\w./-]*')

# Citations in files this change could not edit (other work was in progress there). Replace the citation
# with a path in the repository (or drop it), then delete the entry: an entry no longer cited fails the test.
PENDING: set = set()   # (file, citation) pairs allowed while their fix is pending


def scanned_files():
    this_file = Path(__file__).resolve()
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(folder) / name
            if name.endswith(SCANNED_SUFFIXES) and path.resolve() != this_file:
                yield path


def repository_paths():
    paths = set()
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        relative = Path(folder).relative_to(REPO_ROOT).as_posix()
        prefix = '' if relative == '.' else relative + '/'
        paths.update(prefix + name for name in (*dirs, *files))
    return paths


def citations(text):
    found = {match.group(1) for match in MD_PATH.finditer(text)}
    found |= {match.group(1) for match in DOC_DIR_PATH.finditer(text)}
    return {cited for cited in found if cited.rsplit('/', 1)[-1] not in WRITTEN_NAMES}


def resolves(cited, citing, known):
    root = REPO_ROOT.resolve()
    for base in (citing.parent, REPO_ROOT, REPO_ROOT / 'docs'):
        candidate = (base / cited).resolve()
        if candidate.is_relative_to(root) and candidate.exists():
            return True
    if '..' in cited.split('/'):
        return False
    tail = cited.removeprefix('./')
    return any(path == tail or path.endswith('/' + tail) for path in known)


def test_every_cited_document_is_in_the_repository():
    known = repository_paths()
    missing, seen_pending = [], set()
    for path in scanned_files():
        relative = path.relative_to(REPO_ROOT).as_posix()
        text = path.read_text(encoding='utf-8', errors='replace')
        for cited in sorted(citations(text)):
            if resolves(cited, path, known):
                continue
            if (relative, cited) in PENDING:
                seen_pending.add((relative, cited))
                continue
            missing.append(f'{relative}: {cited}')
        for match in SHARED.finditer(text):
            if (relative, match.group(0)) in PENDING:
                seen_pending.add((relative, match.group(0)))
            else:
                missing.append(f'{relative}: {match.group(0)} (outside the repository)')
    assert not missing, 'cited documents not in the repository:\n' + '\n'.join(missing)
    stale = PENDING - seen_pending
    assert not stale, f'no longer cited, delete from PENDING in {Path(__file__).name}: {sorted(stale)}'


def test_the_citation_pattern():
    text = ('see ``docs/spec/CKD.md`` sec. 4.5, (CKD.md sec. 3), ``../shared/ros/NOTES.md`` sec. 3.4, '
            'doc/performance.md, [x](https://github.com/o/r/blob/main/README.md), out / "metrics.md", '
            'docs/images/a.png and ckd_train/README.md.')
    assert citations(text) == {'docs/spec/CKD.md', 'CKD.md', '../shared/ros/NOTES.md', 'doc/performance.md',
                               'docs/images/a.png', 'ckd_train/README.md'}
    known = repository_paths()
    citing = REPO_ROOT / 'ckd_ros' / 'core' / 'image.py'
    assert resolves('docs/spec/CKD.md', citing, known) and resolves('CKD.md', citing, known)
    assert resolves('spec/CKD.md', citing, known) and resolves('docs/ros_notes.md', citing, known)
    assert not resolves('doc/performance.md', citing, known)
    assert not resolves('../shared/ros/NOTES.md', REPO_ROOT / 'README.md', known)
    assert not resolves('NOTES.md', citing, known)
    assert SHARED.search(text).group(0) == '../shared/ros/NOTES.md'
