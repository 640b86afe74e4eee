package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/kadlib/kad"
)

// maxFileCIDs bounds what provide --file reads: the CIDs are all held in
// memory (about 100 bytes each) to be checked before anything is sent.
const maxFileCIDs = 10_000_000

// provideReportJSON is the ProvideReport that provide --file --json prints.
type provideReportJSON struct {
	Keys       int      `json:"keys"`
	Lookups    int      `json:"lookups"`
	Messages   int      `json:"messages"`
	Streams    int      `json:"streams"`
	KeysMissed int      `json:"keys_missed"`
	Provider   string   `json:"provider"`
	Addrs      []string `json:"addrs"`
	Seconds    float64  `json:"seconds"`
}

// provideFile announces every CID listed in file ("-": standard input)
// with one ProvideManyChan, showing its progress on a terminal.
func provideFile(ctx context.Context, e *env, file string) error {
	cids, err := readCIDs(e, file)
	if err != nil {
		return err
	}
	return withClient(ctx, e, func(ctx context.Context, n *node) error {
		bar := newProvideBar(e.stderr, len(cids))
		ch := make(chan cid.Cid)
		go func() {
			defer close(ch)
			for _, c := range cids {
				select {
				case ch <- c:
				case <-ctx.Done():
					return
				}
			}
		}()
		start := time.Now()
		rep, err := n.d.ProvideManyChan(ctx, ch, kad.ProvideManyProgress(bar.update))
		bar.finish()
		if err != nil {
			return err
		}
		took := time.Since(start)
		if e.flags.data == "" && !e.flags.json {
			fmt.Fprintln(e.stderr, "note: the records name this short-lived client, which is now exiting; see kad help provide")
		}
		if e.flags.json {
			return e.print(provideReportJSON{
				Keys: rep.Keys, Lookups: rep.Lookups, Messages: rep.Messages, Streams: rep.Streams, KeysMissed: rep.KeysMissed,
				Provider: n.h.ID().String(), Addrs: n.addrs(), Seconds: took.Round(time.Millisecond).Seconds(),
			}, "")
		}
		return e.print(nil, "announced %d %s in %d %s (%d ADD_PROVIDER messages on %d streams), %d missed, in %v: provider %s",
			rep.Keys, plural(rep.Keys, "key"), rep.Lookups, plural(rep.Lookups, "lookup"), rep.Messages, rep.Streams,
			rep.KeysMissed, took.Round(time.Millisecond), n.h.ID())
	})
}

// readCIDs reads one CID a line; blank lines and # comments are skipped.
// Any bad line is a usage error naming it, before the network is touched.
func readCIDs(e *env, file string) ([]cid.Cid, error) {
	var r io.Reader = e.stdin
	name := "standard input"
	if file != "-" {
		fh, err := os.Open(file)
		if err != nil {
			return nil, usagef("--file: %v", err)
		}
		defer fh.Close()
		r, name = fh, file
	}
	var cids []cid.Cid
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		c, err := cid.Decode(s)
		if err != nil {
			return nil, usagef("%s, line %d: %q is not a CID: %v", name, line, s, err)
		}
		if len(cids) == maxFileCIDs {
			return nil, usagef("%s: over %d CIDs; split the list", name, maxFileCIDs)
		}
		cids = append(cids, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(cids) == 0 {
		return nil, usagef("%s holds no CID", name)
	}
	return cids, nil
}

// provideBar draws a ProvideMany's progress on a terminal: keys placed
// (their closest peers found and their records queued to them) out of
// all, the lookups so far, the rate and the time left. Off a terminal it draws
// nothing.
type provideBar struct {
	bar   *progressbar.ProgressBar // nil: not a terminal
	total int
}

func newProvideBar(w io.Writer, total int) *provideBar {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return &provideBar{}
	}
	return &provideBar{total: total, bar: progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("placing keys"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("keys"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionFullWidth(),
		progressbar.OptionClearOnFinish(),
	)}
}

// update is the ProvideManyProgress callback.
func (b *provideBar) update(p kad.ProvideProgress) {
	if b.bar == nil {
		return
	}
	desc := fmt.Sprintf("%d %s", p.Report.Lookups, plural(p.Report.Lookups, "lookup"))
	if p.Placed >= b.total {
		desc += ", sending" // every key placed: only sends are left
	}
	b.bar.Describe(desc)
	_ = b.bar.Set(p.Placed)
}

func (b *provideBar) finish() {
	if b.bar != nil {
		_ = b.bar.Finish()
	}
}
