// The compiled anchor of `event bench`: a bare consumer and a confirmed publisher on amqp091-go,
// RabbitMQ's own Go client, doing what the Python contestants do (event/bench_child.py), so that the
// price of Python is measured in the same run on the same broker.
//
//	consume: a channel per queue at prefetch 200, each body decoded as JSON, a multiple ack every 50th
//	         message of a channel; timed from the first message to every message acked.
//	publish: persistent JSON messages with publisher confirms, `window` in flight; timed from the first
//	         publish to the last confirm, after one warm-up publish confirmed. A nack fails the run.
//	latency: one queue as consume does; each body's "t" (µs since the epoch at its publish) against
//	         the clock when it is handled; prints "ready" once consuming, then p50, p99 and p99.9.
//
// Built by event/bench.py with the machine's Go in GOPATH mode (GO111MODULE=off; Debian's
// golang-github-rabbitmq-amqp091-go-dev provides the client), never fetched. The broker URL comes in
// $AMQP_URL, like the Python children's. It prints one JSON line of figures.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const prefetch = 200
const ackEvery = 50
const warmUpKey = "bench.warm-up" // bound to nothing: the broker confirms the warm-up publish and drops it

type span struct {
	start    time.Time
	startCPU float64
	once     sync.Once
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func (s *span) begin() {
	s.once.Do(func() { s.start, s.startCPU = time.Now(), cpuSeconds() })
}

func peakRSSMB() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Maxrss) / 1024
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func consume(conn *amqp.Connection, queues []string, jobs int64) *span {
	s := &span{}
	var total int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, queue := range queues {
		ch, err := conn.Channel()
		if err != nil {
			fail("channel: %v", err)
		}
		if err := ch.Qos(prefetch, 0, false); err != nil {
			fail("qos: %v", err)
		}
		deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
		if err != nil {
			fail("consume %s: %v", queue, err)
		}
		wg.Add(1)
		go func(ch *amqp.Channel, deliveries <-chan amqp.Delivery) {
			defer wg.Done()
			unacked, last := 0, uint64(0)
			for {
				select {
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					s.begin()
					var body map[string]any
					if err := json.Unmarshal(d.Body, &body); err != nil {
						fail("body: %v", err)
					}
					unacked, last = unacked+1, d.DeliveryTag
					if unacked == ackEvery {
						ch.Ack(last, true)
						unacked = 0
					}
					if atomic.AddInt64(&total, 1) == jobs {
						close(done)
					}
				case <-done:
					if unacked > 0 {
						ch.Ack(last, true)
					}
					return
				}
			}
		}(ch, deliveries)
	}
	wg.Wait()
	return s
}

func latency(conn *amqp.Connection, queue string, jobs int64) map[string]any {
	ch, err := conn.Channel()
	if err != nil {
		fail("channel: %v", err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		fail("qos: %v", err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		fail("consume %s: %v", queue, err)
	}
	fmt.Println("ready")
	latencies := make([]float64, 0, jobs)
	for d := range deliveries {
		var body map[string]any
		if err := json.Unmarshal(d.Body, &body); err != nil {
			fail("body: %v", err)
		}
		t, _ := body["t"].(float64)
		latencies = append(latencies, float64(time.Now().UnixMicro())-t)
		n := int64(len(latencies))
		if n%ackEvery == 0 || n == jobs {
			ch.Ack(d.DeliveryTag, true)
		}
		if n == jobs {
			break
		}
	}
	sort.Float64s(latencies)
	rank := func(q float64) float64 {
		i := int(q * float64(len(latencies)))
		if i >= len(latencies) {
			i = len(latencies) - 1
		}
		return latencies[i] / 1000
	}
	return map[string]any{"p50_ms": rank(0.5), "p99_ms": rank(0.99), "p999_ms": rank(0.999), "count": len(latencies)}
}

func messageID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// The body of message n: {"n": n}, or with bodySize the JSON padded to that many bytes with a "pad"
// string, as event/bench_child.py's payload() makes it (the same bytes: Go sorts the keys, "n" first).
func message(n int64, pad *string) []byte {
	if pad == nil {
		body, _ := json.Marshal(map[string]int64{"n": n})
		return body
	}
	body, _ := json.Marshal(map[string]any{"n": n, "pad": *pad})
	return body
}

func publish(conn *amqp.Connection, exchange string, keys []string, jobs int64, window int64, pad *string) *span {
	ch, err := conn.Channel()
	if err != nil {
		fail("channel: %v", err)
	}
	if err := ch.Confirm(false); err != nil {
		fail("confirm: %v", err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, window+1))
	send := func(n int64, key string) {
		err := ch.Publish(exchange, key, false, false, amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    messageID(),
			Timestamp:    time.Now(),
			Body:         message(n, pad),
		})
		if err != nil {
			fail("publish: %v", err)
		}
	}
	confirm := func() {
		c, ok := <-confirms
		if !ok {
			fail("the channel closed awaiting a confirm")
		}
		if !c.Ack {
			fail("the broker nacked publish %d", c.DeliveryTag)
		}
	}
	send(0, warmUpKey) // as every contestant does: one publish, confirmed, before the timed ones
	confirm()
	s := &span{}
	s.begin()
	var sent, confirmed int64
	for confirmed < jobs {
		if sent < jobs && sent-confirmed < window {
			send(sent, keys[sent%int64(len(keys))])
			sent++
			continue
		}
		confirm()
		confirmed++
	}
	return s
}

func main() {
	jobs := flag.Int64("jobs", 0, "messages")
	queues := flag.String("queues", "", "consume: comma-separated queues")
	exchange := flag.String("exchange", "", "publish: the exchange")
	keys := flag.String("keys", "", "publish: comma-separated routing keys")
	window := flag.Int64("window", 500, "publish: confirms in flight")
	bodySize := flag.Int("body-size", 0, "publish: bytes of JSON a body (0: {\"n\": n})")
	flag.Parse()
	var pad *string
	if *bodySize > 0 {
		padding := ""
		if short := len(`{"n":0,"pad":""}`); *bodySize > short {
			padding = strings.Repeat("x", *bodySize-short)
		}
		pad = &padding
	}
	if flag.NArg() != 1 || *jobs <= 0 {
		fail("usage: anchor consume|publish --jobs N ...")
	}
	url := os.Getenv("AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		fail("connect: %v", err)
	}
	if flag.Arg(0) == "latency" {
		figures := latency(conn, *queues, *jobs)
		conn.Close()
		figures["loop"], figures["gomaxprocs"] = "go", runtime.GOMAXPROCS(0)
		out, _ := json.Marshal(figures)
		fmt.Println(string(out))
		return
	}
	var s *span
	switch flag.Arg(0) {
	case "consume":
		s = consume(conn, strings.Split(*queues, ","), *jobs)
	case "publish":
		s = publish(conn, *exchange, strings.Split(*keys, ","), *jobs, *window, pad)
	default:
		fail("unknown phase %q", flag.Arg(0))
	}
	conn.Close()
	figures := map[string]any{
		"seconds":     time.Since(s.start).Seconds(),
		"cpu_seconds": cpuSeconds() - s.startCPU,
		"count":       *jobs,
		"loop":        "go",
		"gomaxprocs":  runtime.GOMAXPROCS(0),
		"peak_rss_mb": peakRSSMB(),
	}
	out, _ := json.Marshal(figures)
	fmt.Println(string(out))
}
