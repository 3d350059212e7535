// Command tlogcheck checks a log that Veil exported (C2SP tlog-checkpoint and tlog-tiles) with
// an implementation that is not Veil's: Go's golang.org/x/mod/sumdb/note and sumdb/tlog. It
// opens the signed checkpoints with the log's verifier key, reads the hash tiles (each checked
// against the checkpoint's root as it is read), proves from them that the older checkpoint is
// a prefix of the newer and that an entry is in the log, and checks a consistency proof that
// Veil made. It prints what it checked, or fails naming what did not verify.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A checkpoint's body: origin, size, root hash, then extension lines.
type checkpoint struct {
	origin string
	tree   tlog.Tree
}

func openCheckpoint(path string, verifiers note.Verifiers) (checkpoint, error) {
	msg, err := os.ReadFile(path)
	if err != nil {
		return checkpoint{}, err
	}
	n, err := note.Open(msg, verifiers)
	if err != nil {
		return checkpoint{}, fmt.Errorf("%s: %w", path, err)
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		return checkpoint{}, fmt.Errorf("%s: a checkpoint has an origin, a size and a root", path)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return checkpoint{}, fmt.Errorf("%s: size %q", path, lines[1])
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		return checkpoint{}, fmt.Errorf("%s: root %q: %w", path, lines[2], err)
	}
	return checkpoint{origin: lines[0], tree: tlog.Tree{N: size, Hash: root}}, nil
}

// tiles reads hash tiles from an export: C2SP paths are Go's without the height segment.
type tiles struct{ dir string }

func (t tiles) Height() int { return 8 }

func (t tiles) ReadTiles(ts []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(ts))
	for i, tile := range ts {
		p := strings.Replace(tile.Path(), "tile/8/", "tile/", 1)
		b, err := os.ReadFile(filepath.Join(t.dir, p))
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func (t tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func readProof(path string) ([]tlog.Hash, error) {
	f, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var proof []tlog.Hash
	s := bufio.NewScanner(bytes.NewReader(f))
	for s.Scan() {
		if s.Text() == "" {
			continue
		}
		h, err := tlog.ParseHash(s.Text())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		proof = append(proof, h)
	}
	return proof, s.Err()
}

func run() error {
	key := flag.String("key", "", "the log's verifier key")
	dir := flag.String("dir", "", "the exported log")
	older := flag.String("older", "", "a checkpoint kept from before")
	proofPath := flag.String("proof", "", "Veil's consistency proof from -older to the export (base64 hashes, one a line)")
	entryPath := flag.String("entry", "", "an entry's bytes")
	index := flag.Int64("index", -1, "the entry's index")
	flag.Parse()
	v, err := note.NewVerifier(*key)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	verifiers := note.VerifierList(v)
	cur, err := openCheckpoint(filepath.Join(*dir, "checkpoint"), verifiers)
	if err != nil {
		return err
	}
	fmt.Printf("checkpoint: %s, %d entries, signature verified\n", cur.origin, cur.tree.N)
	hashes := tlog.TileHashReader(cur.tree, tiles{*dir})
	if *older != "" {
		old, err := openCheckpoint(*older, verifiers)
		if err != nil {
			return err
		}
		if old.origin != cur.origin {
			return fmt.Errorf("the older checkpoint is of %s, not %s", old.origin, cur.origin)
		}
		proof, err := tlog.ProveTree(cur.tree.N, old.tree.N, hashes)
		if err != nil {
			return fmt.Errorf("proving consistency from the tiles: %w", err)
		}
		if err := tlog.CheckTree(proof, cur.tree.N, cur.tree.Hash, old.tree.N, old.tree.Hash); err != nil {
			return fmt.Errorf("the tiles' consistency proof from %d to %d: %w", old.tree.N, cur.tree.N, err)
		}
		fmt.Printf("consistency from %d to %d: proved from the tiles\n", old.tree.N, cur.tree.N)
		if *proofPath != "" {
			given, err := readProof(*proofPath)
			if err != nil {
				return err
			}
			if err := tlog.CheckTree(given, cur.tree.N, cur.tree.Hash, old.tree.N, old.tree.Hash); err != nil {
				return fmt.Errorf("Veil's consistency proof from %d to %d: %w", old.tree.N, cur.tree.N, err)
			}
			fmt.Printf("consistency from %d to %d: Veil's proof of %d hashes verified\n", old.tree.N, cur.tree.N, len(given))
		}
	}
	if *entryPath != "" {
		entry, err := os.ReadFile(*entryPath)
		if err != nil {
			return err
		}
		if *index < 0 {
			return errors.New("-entry needs -index")
		}
		proof, err := tlog.ProveRecord(cur.tree.N, *index, hashes)
		if err != nil {
			return fmt.Errorf("proving entry %d from the tiles: %w", *index, err)
		}
		if err := tlog.CheckRecord(proof, cur.tree.N, cur.tree.Hash, *index, tlog.RecordHash(entry)); err != nil {
			return fmt.Errorf("entry %d: %w", *index, err)
		}
		fmt.Printf("entry %d: included\n", *index)
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(1)
	}
}
