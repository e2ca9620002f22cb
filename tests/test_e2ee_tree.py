"""The ratchet tree (bot/e2ee/tree.py) against the MLS working group's test vectors.

tree-math.json (Appendix C), tree-validation.json (§7.8 tree hashes, §4.1.1 resolutions,
§12.4.3.1 joiner checks), treekem.json (§7.5-7.6 UpdatePath merge, decryption and
creation) and tree-operations.json (§12.1 Add / Update / Remove), cipher suite 1 only; see
tests/vectors/mls/README.md. Plus the rejections the vectors do not exercise.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bot.e2ee import crypto
from bot.e2ee.messages import (
    Add,
    GroupContext,
    LeafNode,
    ParentNode,
    Proposal,
    Remove,
    Update,
    UpdatePath,
)
from bot.e2ee.tree import (
    PathSecrets,
    RatchetTree,
    TreeError,
    common_ancestor,
    copath,
    direct_path,
    in_subtree,
    left,
    level,
    node_width,
    parent,
    right,
    root,
    sibling,
)

VECTORS = Path(__file__).parent / "vectors" / "mls"


def _load(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return [case for case in cases if case.get("cipher_suite", 1) == 1]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


TREE_MATH = _load("tree-math.json")
TREE_VALIDATION = _load("tree-validation.json")
TREEKEM = _load("treekem.json")
TREE_OPERATIONS = _load("tree-operations.json")


# --- tree math ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", TREE_MATH, ids=lambda c: f"n{c['n_leaves']}")
def test_tree_math(case: dict[str, Any]) -> None:
    n = case["n_leaves"]
    assert node_width(n) == case["n_nodes"]
    assert root(n) == case["root"]
    for x in range(case["n_nodes"]):
        assert (left(x) if level(x) else None) == case["left"][x]
        assert (right(x) if level(x) else None) == case["right"][x]
        assert (parent(x, n) if x != root(n) else None) == case["parent"][x]
        assert (sibling(x, n) if x != root(n) else None) == case["sibling"][x]


def test_paths_and_common_ancestor() -> None:
    # RFC 9420 Figure 11 / Appendix C, 8 leaves.
    assert direct_path(0, 8) == [1, 3, 7]
    assert copath(0, 8) == [2, 5, 11]
    assert direct_path(7, 8) == [] and copath(7, 8) == []
    assert common_ancestor(0, 2, 8) == 1
    assert common_ancestor(0, 14, 8) == 7
    assert common_ancestor(8, 12, 8) == 11
    with pytest.raises(ValueError):
        parent(15, 8)


# --- tree validation ---------------------------------------------------------------------


@pytest.mark.parametrize("case", TREE_VALIDATION, ids=lambda c: f"{len(c['tree'])}")
def test_tree_validation(case: dict[str, Any]) -> None:
    tree = RatchetTree.from_bytes(_h(case["tree"]))
    assert tree.node_count == len(case["tree_hashes"])
    assert [h.hex() for h in tree.tree_hashes()] == case["tree_hashes"]
    for x, expected in enumerate(case["resolutions"]):
        assert tree.resolution(x) == expected, f"resolution of node {x}"
    assert tree.tree_hash() == _h(case["tree_hashes"][tree.node_count // 2])
    tree.validate(_h(case["group_id"]), tree_hash=tree.tree_hash())
    assert tree.to_bytes() == _h(case["tree"])


def _first_parent(tree: RatchetTree) -> int:
    return next(x for x in range(1, tree.node_count, 2) if tree.node(x) is not None)


def test_validation_rejects_a_tampered_parent_hash() -> None:
    case = TREE_VALIDATION[-1]
    nodes = RatchetTree.from_bytes(_h(case["tree"])).nodes
    x = _first_parent(RatchetTree(nodes))
    node = nodes[x]
    assert isinstance(node, ParentNode)
    nodes[x] = replace(node, parent_hash=bytes(32))
    with pytest.raises(TreeError, match="parent-hash valid"):
        RatchetTree(nodes).validate(_h(case["group_id"]))


def test_validation_rejects_a_tampered_leaf_and_a_wrong_tree_hash() -> None:
    case = TREE_VALIDATION[0]
    tree = RatchetTree.from_bytes(_h(case["tree"]))
    with pytest.raises(TreeError, match="tree hash"):
        tree.validate(_h(case["group_id"]), tree_hash=bytes(32))
    with pytest.raises(TreeError, match="signature"):
        tree.validate(b"another group")
    nodes = tree.nodes
    leaf = nodes[0]
    assert isinstance(leaf, LeafNode)
    nodes[0] = replace(leaf, signature=bytes(64))
    with pytest.raises(TreeError):
        RatchetTree(nodes).validate(_h(case["group_id"]))


def test_validation_rejects_a_repeated_encryption_key() -> None:
    case = next(c for c in TREE_VALIDATION if len(RatchetTree.from_bytes(_h(c["tree"])).nodes) >= 7)
    nodes = RatchetTree.from_bytes(_h(case["tree"])).nodes
    first, second = nodes[0], nodes[2]
    assert isinstance(first, LeafNode) and isinstance(second, LeafNode)
    nodes[2] = replace(second, encryption_key=first.encryption_key)
    with pytest.raises(TreeError):
        RatchetTree(nodes).validate(_h(case["group_id"]))


def test_decoding_pads_to_a_full_tree_and_checks_positions() -> None:
    tree = RatchetTree.from_bytes(_h(TREE_VALIDATION[0]["tree"]))
    leaf = tree.leaf(0)
    assert leaf is not None
    assert RatchetTree([leaf, None, leaf]).node_count == 3
    assert RatchetTree([leaf, None, leaf, None, leaf]).node_count == 7
    with pytest.raises(TreeError, match="wrong type"):
        RatchetTree([None, leaf, None])


# --- TreeKEM -------------------------------------------------------------------------------


def _x25519_public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_states(case: dict[str, Any], tree: RatchetTree) -> dict[int, dict[int, bytes]]:
    """``leaf_private[index]``: node index -> private key, checked against the tree."""
    states: dict[int, dict[int, bytes]] = {}
    for entry in case["leaves_private"]:
        index = entry["index"]
        keys = {2 * index: _h(entry["encryption_priv"])}
        for item in entry["path_secrets"]:
            secret = crypto.derive_secret(_h(item["path_secret"]), "node")
            keys[item["node"]] = crypto.derive_key_pair(secret)[0]
        for x, private in keys.items():
            node = tree.node(x)
            assert node is not None, f"leaf {index}: private key for blank node {x}"
            assert node.encryption_key == _x25519_public(private)
        states[index] = keys
    return states


def _context(case: dict[str, Any], tree_hash: bytes) -> bytes:
    return GroupContext(
        cipher_suite=1,
        group_id=_h(case["group_id"]),
        epoch=case["epoch"],
        tree_hash=tree_hash,
        confirmed_transcript_hash=_h(case["confirmed_transcript_hash"]),
    ).to_bytes()


def _lowest(secrets: PathSecrets) -> bytes:
    return secrets.path_secrets[min(secrets.path_secrets, key=level)]


@pytest.mark.parametrize("case", TREEKEM, ids=lambda c: f"{len(c['leaves_private'])}leaves")
def test_treekem_received_paths(case: dict[str, Any]) -> None:
    tree = RatchetTree.from_bytes(_h(case["ratchet_tree"]))
    group_id = _h(case["group_id"])
    states = _private_states(case, tree)
    for entry in case["update_paths"]:
        sender = entry["sender"]
        path = UpdatePath.from_bytes(_h(entry["update_path"]))
        merged = tree.copy()
        merged.apply_update_path(sender, path, group_id)
        assert merged.tree_hash() == _h(entry["tree_hash_after"])
        context = _context(case, merged.tree_hash())
        for j, expected in enumerate(entry["path_secrets"]):
            if expected is None:
                assert j == sender or tree.leaf(j) is None
                continue
            for view in (tree, merged):
                secrets = view.decrypt_path(path, sender, j, states[j], group_context=context)
                assert _lowest(secrets) == _h(expected)
                assert secrets.commit_secret == _h(entry["commit_secret"])
                for x, private in secrets.private_keys.items():
                    node = merged.node(x)
                    assert node is not None and node.encryption_key == _x25519_public(private)


@pytest.mark.parametrize("case", TREEKEM, ids=lambda c: f"{len(c['leaves_private'])}leaves")
def test_treekem_own_paths(case: dict[str, Any]) -> None:
    """The vectors' last step: an UpdatePath we make opens for every other member, merges
    to the same tree on their side, and leaves a parent-hash-valid tree."""
    tree = RatchetTree.from_bytes(_h(case["ratchet_tree"]))
    group_id = _h(case["group_id"])
    states = _private_states(case, tree)
    for entry in case["leaves_private"]:
        sender = entry["index"]
        ours = tree.copy()
        path, made = ours.encrypt_path(
            sender, _h(entry["signature_priv"]), group_id, lambda th: _context(case, th)
        )
        ours.verify_parent_hashes()
        ours.validate(group_id)
        theirs = tree.copy()
        theirs.apply_update_path(sender, path, group_id)
        assert theirs == ours and theirs.to_bytes() == ours.to_bytes()
        context = _context(case, ours.tree_hash())
        for j, keys in states.items():
            if j == sender:
                continue
            got = tree.decrypt_path(path, sender, j, keys, group_context=context)
            assert got.commit_secret == made.commit_secret
            assert _lowest(got) == made.path_secrets[min(got.path_secrets, key=level)]
            # What a Welcome would give leaf j: the path secret of our common ancestor.
            ancestor = common_ancestor(2 * j, 2 * sender, ours.leaf_count)
            joined = ours.welcome_path_secrets(j, sender, made.path_secrets[ancestor])
            assert joined.private_keys == got.private_keys
            assert joined.commit_secret == made.commit_secret


def test_treekem_rejections() -> None:
    case = TREEKEM[3]
    tree = RatchetTree.from_bytes(_h(case["ratchet_tree"]))
    group_id = _h(case["group_id"])
    states = _private_states(case, tree)
    entry = case["update_paths"][0]
    sender = entry["sender"]
    path = UpdatePath.from_bytes(_h(entry["update_path"]))
    merged = tree.copy()
    merged.apply_update_path(sender, path, group_id)
    context = _context(case, merged.tree_hash())
    other = next(j for j in states if j != sender)

    with pytest.raises(TreeError, match="cannot decrypt"):
        tree.decrypt_path(path, sender, other, states[other], group_context=context + b"x")
    with pytest.raises(TreeError, match="no private key"):
        tree.decrypt_path(path, sender, other, {}, group_context=context)
    with pytest.raises(TreeError, match="our own leaf"):
        tree.decrypt_path(path, sender, sender, states[sender], group_context=context)
    swapped = replace(
        path, nodes=(replace(path.nodes[0], encryption_key=bytes(32)), *path.nodes[1:])
    )
    with pytest.raises(TreeError):
        tree.copy().apply_update_path(sender, swapped, group_id)
    short = replace(path, nodes=path.nodes[:-1])
    with pytest.raises(TreeError, match="filtered direct path"):
        tree.decrypt_path(short, sender, other, states[other], group_context=context)
    before = tree.copy()
    with pytest.raises(TreeError, match="signature"):
        tree.apply_update_path(sender, path, b"another group")
    assert tree == before, "a rejected UpdatePath must leave the tree unchanged"
    current = tree.leaf(sender)
    assert current is not None
    with pytest.raises(TreeError, match=r"not commit|reuses an encryption key"):
        tree.apply_update_path(sender, replace(path, leaf_node=current), group_id)


def test_path_secrets_repr_hides_secrets() -> None:
    secrets = PathSecrets(b"\x11" * 32, {1: b"\x22" * 32}, {1: b"\x33" * 32})
    text = repr(secrets) + str(secrets)
    assert "11" * 4 not in text and "22" * 4 not in text and "33" * 4 not in text
    assert "\\x11" not in text and "\\x33" not in text


# --- tree operations -----------------------------------------------------------------------


@pytest.mark.parametrize("case", TREE_OPERATIONS, ids=lambda c: c["proposal"][:4])
def test_tree_operations(case: dict[str, Any]) -> None:
    tree = RatchetTree.from_bytes(_h(case["tree_before"]))
    assert tree.tree_hash() == _h(case["tree_hash_before"])
    body = Proposal.from_bytes(_h(case["proposal"])).body
    if isinstance(body, Add):
        tree.add_leaf(body.key_package.leaf_node)
    elif isinstance(body, Update):
        tree.update_leaf(case["proposal_sender"], body.leaf_node)
    else:
        assert isinstance(body, Remove)
        tree.remove_leaf(body.removed)
    assert tree.to_bytes() == _h(case["tree_after"])
    assert tree.tree_hash() == _h(case["tree_hash_after"])


def test_add_extends_and_marks_unmerged_then_remove_truncates() -> None:
    case = TREE_VALIDATION[0]  # a full tree of two leaves
    tree = RatchetTree.from_bytes(_h(case["tree"]))
    assert tree.leaf_count == 2
    newcomer = tree.leaf(1)
    assert newcomer is not None
    newcomer = replace(newcomer, encryption_key=b"\x01" * 32)
    index = tree.add_leaf(newcomer)
    assert (index, tree.leaf_count) == (2, 4)
    top = tree.node(1)
    assert isinstance(top, ParentNode) and top.unmerged_leaves == ()
    assert tree.resolution(5) == [4]
    assert tree.filtered_direct_path(2) == [3]
    with pytest.raises(TreeError, match="blank"):
        tree.remove_leaf(3)
    tree.remove_leaf(2)
    assert tree.leaf_count == 2
    assert tree.to_bytes() == _h(case["tree"])


def test_commit_with_an_add_excludes_the_newcomer() -> None:
    """§7.6 / §12.4.1: the leaves a Commit adds get no ciphertext in its UpdatePath (their
    path secret comes in the Welcome), and receivers must leave them out too."""
    case = TREEKEM[4]  # leaves 0-5 of 8
    tree = RatchetTree.from_bytes(_h(case["ratchet_tree"]))
    group_id = _h(case["group_id"])
    states = _private_states(case, tree)
    template = tree.leaf(5)
    assert template is not None
    newcomer = tree.add_leaf(replace(template, encryption_key=_x25519_public(b"\x07" * 32)))
    sender = 0
    ours = tree.copy()
    signer = _h(case["leaves_private"][sender]["signature_priv"])
    path, made = ours.encrypt_path(
        sender, signer, group_id, lambda th: _context(case, th), excluded_leaves=[newcomer]
    )
    ours.verify_parent_hashes()
    context = _context(case, ours.tree_hash())
    excluded_somewhere = False
    for p, node in zip(ours.filtered_direct_path(sender), path.nodes, strict=True):
        child = right(p) if in_subtree(left(p), 2 * sender) else left(p)
        assert len(node.encrypted_path_secret) == len(ours.resolution(child, [newcomer]))
        excluded_somewhere |= 2 * newcomer in ours.resolution(child)
    assert excluded_somewhere
    other = next(j for j in states if j != sender)
    got = tree.decrypt_path(
        path, sender, other, states[other], group_context=context, excluded_leaves=[newcomer]
    )
    assert got.commit_secret == made.commit_secret
    with pytest.raises(TreeError, match="ciphertexts"):
        tree.decrypt_path(path, sender, other, states[other], group_context=context)
    ancestor = common_ancestor(2 * newcomer, 2 * sender, ours.leaf_count)
    joined = ours.welcome_path_secrets(newcomer, sender, made.path_secrets[ancestor])
    assert joined.commit_secret == made.commit_secret
    with pytest.raises(TreeError, match="does not match"):
        ours.welcome_path_secrets(newcomer, sender, bytes(32))


def test_check_leaf_refuses_a_keypackage_leaf_reusing_keys() -> None:
    """§7.3: a leaf about to be added (index ``leaf_count``) may not reuse a member's
    encryption or signature key; its own signature is checked as a key_package leaf."""
    case = TREE_OPERATIONS[0]
    body = Proposal.from_bytes(_h(case["proposal"])).body
    assert isinstance(body, Add)
    tree = RatchetTree.from_bytes(_h(case["tree_before"]))
    leaf = body.key_package.leaf_node
    tree.check_leaf(leaf, tree.leaf_count, b"any group")
    member = next(node for _, node in tree.members())
    with pytest.raises(TreeError, match="encryption key"):
        tree.check_leaf(replace(leaf, encryption_key=member.encryption_key), tree.leaf_count, b"")
    with pytest.raises(TreeError, match="signature key"):
        tree.check_leaf(replace(leaf, signature_key=member.signature_key), tree.leaf_count, b"")
    with pytest.raises(TreeError, match="invalid signature"):
        tree.check_leaf(replace(leaf, signature=bytes(64)), tree.leaf_count, b"")
