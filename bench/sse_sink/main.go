// sse_sink: bench/load.py's `subs` mode in Go, so that 1,000 subscribers of a busy room cost the load side
// little CPU and the end-to-end figures measure the service, not the Python client reading it.
//
//	sse_sink CONFIG_JSON
//
// Same config, output and protocol as `python bench/load.py subs CONFIG_JSON`: n SSE streams on
// 127.0.0.1:port; "READY <connected> <failed>" on stdout once all are connected; for every event whose
// text carries the load generator's mark (E<seq> <scheduled wall time>) the latency from that time and
// from the service's sent_at; stops on a "stop" line (or EOF) on stdin, or after max_seconds; results
// as JSON in cfg.out, latencies and sequence numbers as little-endian float64/int64 in cfg.lat, cfg.seq
// and cfg.lat_service. Standard library only.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

type config struct {
	Port               int     `json:"port"`
	Path               string  `json:"path"`
	N                  int     `json:"n"`
	ConnectConcurrency int     `json:"connect_concurrency"`
	MaxSeconds         float64 `json:"max_seconds"`
	Out                string  `json:"out"`
	Lat                string  `json:"lat"`
	Seq                string  `json:"seq"`
	LatService         string  `json:"lat_service"`
}

// samples of one stream; merged when it ends
type samples struct {
	lat, latService []float64
	seq             []int64
}

var (
	textMark   = []byte(`"text":"E`)
	sentAtMark = []byte(`","sent_at":"`)
	eventEnd   = []byte("\n\n")
)

func wallNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// scan records the marks of the complete events in b (received at now) and returns how much of b it used.
func scan(b []byte, now float64, s *samples, sentAt map[string]float64) int {
	last := bytes.LastIndex(b, eventEnd)
	if last < 0 {
		return 0
	}
	used := last + len(eventEnd)
	rest := b[:used]
	for {
		i := bytes.Index(rest, textMark)
		if i < 0 {
			break
		}
		rest = rest[i+len(textMark):]
		sp := bytes.IndexByte(rest, ' ')
		if sp < 0 {
			break
		}
		seq, err := strconv.ParseInt(string(rest[:sp]), 10, 64)
		rest = rest[sp+1:]
		sp = bytes.IndexByte(rest, ' ')
		if err != nil || sp < 0 {
			continue
		}
		sched, err := strconv.ParseFloat(string(rest[:sp]), 64)
		if err != nil {
			continue
		}
		j := bytes.Index(rest, sentAtMark)
		if j < 0 {
			continue
		}
		rest = rest[j+len(sentAtMark):]
		k := bytes.IndexByte(rest, '"')
		if k < 0 {
			continue
		}
		key := string(rest[:k])
		accepted, ok := sentAt[key]
		if !ok {
			t, err := time.Parse("2006-01-02T15:04:05.999999999-07:00", key)
			if err != nil {
				continue
			}
			accepted = float64(t.UnixNano()) / 1e9
			sentAt[key] = accepted
		}
		s.lat = append(s.lat, now-sched)
		s.latService = append(s.latService, now-accepted)
		s.seq = append(s.seq, seq)
	}
	return used
}

type stream struct {
	conn   net.Conn
	events int
}

func open(cfg *config) (net.Conn, []byte, error) {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", cfg.Port), 30*time.Second)
	if err != nil {
		return nil, nil, err
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
		cfg.Path, cfg.Port)
	if _, err := conn.Write([]byte(req)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var head []byte
	buf := make([]byte, 4096)
	for {
		k, err := conn.Read(buf)
		head = append(head, buf[:k]...)
		if i := bytes.Index(head, []byte("\r\n\r\n")); i >= 0 {
			conn.SetReadDeadline(time.Time{})
			if len(head) < 12 || string(head[9:12]) != "200" {
				conn.Close()
				return nil, nil, fmt.Errorf("status %q", head[:min(len(head), 12)])
			}
			return conn, head[i+4:], nil
		}
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
}

func main() {
	var cfg config
	if len(os.Args) != 2 || json.Unmarshal([]byte(os.Args[1]), &cfg) != nil {
		fmt.Fprintln(os.Stderr, "usage: sse_sink CONFIG_JSON")
		os.Exit(2)
	}
	if cfg.ConnectConcurrency <= 0 {
		cfg.ConnectConcurrency = 64
	}
	if cfg.MaxSeconds <= 0 {
		cfg.MaxSeconds = 600
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}

	var mu sync.Mutex
	var all samples
	failures := []string{}
	var streams []*stream
	stopping := make(chan struct{})
	disconnects := 0
	var readers sync.WaitGroup

	read := func(st *stream, first []byte) {
		defer readers.Done()
		var mine samples
		sentAt := map[string]float64{}
		buf := make([]byte, 0, 256<<10)
		buf = append(buf, first...)
		chunk := make([]byte, 128<<10)
		for {
			k, err := st.conn.Read(chunk)
			if k > 0 {
				now := wallNow()
				buf = append(buf, chunk[:k]...)
				before := len(mine.lat)
				used := scan(buf, now, &mine, sentAt)
				st.events += len(mine.lat) - before
				buf = append(buf[:0], buf[used:]...)
			}
			if err != nil {
				break
			}
		}
		mu.Lock()
		select {
		case <-stopping:
		default:
			disconnects++
		}
		all.lat = append(all.lat, mine.lat...)
		all.latService = append(all.latService, mine.latService...)
		all.seq = append(all.seq, mine.seq...)
		mu.Unlock()
	}

	began := time.Now()
	gate := make(chan struct{}, cfg.ConnectConcurrency)
	var dialers sync.WaitGroup
	for i := 0; i < cfg.N; i++ {
		dialers.Add(1)
		gate <- struct{}{}
		go func() {
			defer dialers.Done()
			defer func() { <-gate }()
			conn, first, err := open(&cfg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures = append(failures, err.Error())
				return
			}
			st := &stream{conn: conn}
			streams = append(streams, st)
			readers.Add(1)
			go read(st, first)
		}()
	}
	dialers.Wait()
	connectS := time.Since(began).Seconds()
	fmt.Printf("READY %d %d\n", len(streams), len(failures))

	stdin := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "stop" {
				break
			}
		}
		close(stdin)
	}()
	cpu0, t0 := cpuSeconds(), time.Now()
	select {
	case <-stdin:
	case <-time.After(time.Duration(cfg.MaxSeconds * float64(time.Second))):
	}
	cpuShare := (cpuSeconds() - cpu0) / time.Since(t0).Seconds()
	close(stopping)
	for _, st := range streams {
		st.conn.Close()
	}
	readers.Wait()

	counts := make([]int, len(streams))
	for i, st := range streams {
		counts[i] = st.events
	}
	sort.Ints(counts)
	perMin, perMax := 0, 0
	if len(counts) > 0 {
		perMin, perMax = counts[0], counts[len(counts)-1]
	}
	if len(failures) > 5 {
		failures = failures[:5]
	}
	write := func(path string, data any) {
		if path == "" {
			return
		}
		f, err := os.Create(path)
		if err != nil {
			panic(err)
		}
		defer f.Close()
		w := bufio.NewWriter(f)
		binary.Write(w, binary.LittleEndian, data)
		w.Flush()
	}
	write(cfg.Lat, all.lat)
	write(cfg.Seq, all.seq)
	write(cfg.LatService, all.latService)
	result := map[string]any{
		"connected": len(streams), "failed": cfg.N - len(streams), "failures": failures, "connect_s": connectS,
		"events": len(all.lat), "client_cpu": cpuShare, "disconnects": disconnects,
		"per_sub_min": perMin, "per_sub_max": perMax, "pid": os.Getpid(), "client": "go",
	}
	out, _ := json.Marshal(result)
	if err := os.WriteFile(cfg.Out, out, 0o644); err != nil {
		panic(err)
	}
}
