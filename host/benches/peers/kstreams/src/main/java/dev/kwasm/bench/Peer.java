package dev.kwasm.bench;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Branched;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The Kafka Streams peer of kwasm's pipeline benchmark: the same work as the
 * {@code passthrough} plugin ({@code mode=passthrough}) or the {@code transform}
 * plugin ({@code mode=transform}), at least once, with client settings chosen
 * to match kwasm's (see {@link #streamsConfig}).
 *
 * <p>Arguments are {@code name=value}: {@code brokers}, {@code input}, {@code output},
 * {@code application-id} (also the group id), {@code mode}, and optionally
 * {@code dlq} (transform failures; default {@code <output>.dlq}), {@code threads}
 * (default: the cores the JVM sees, as kwasm's {@code host.workers}),
 * {@code guarantee} ({@code at_least_once}, the default, or {@code exactly_once_v2}),
 * {@code commit-interval-ms} (default 1000, kwasm's {@code host.commit_interval_ms}; under
 * {@code exactly_once_v2} 100, Kafka Streams' own default and kwasm's
 * {@code transaction.commit_interval_ms}),
 * {@code state-dir} (Kafka Streams' {@code state.dir}; the topology has no state),
 * {@code rename}, {@code drop}, {@code add} (the transform plugin's own keys).
 *
 * <p>It tells the harness two things on stdout, one line each: {@code running}
 * when Kafka Streams reaches RUNNING (partitions assigned), and {@code first-record}
 * when the first input record reaches the topology, which is where the
 * harness starts its clock, as it does at kwasm's first fetched message.
 * SIGTERM closes the application (commits, leaves the group) and exits 0.
 */
public final class Peer {
    /** Written once by whichever stream thread sees the first record. */
    private static volatile boolean sawFirst;

    private Peer() {}

    public static void main(String[] argv) {
        Map<String, String> args;
        try {
            args = parseArgs(argv);
        } catch (IllegalArgumentException e) {
            System.err.println("kstreams peer: " + e.getMessage());
            System.exit(2);
            return;
        }
        Topology topology;
        Properties props;
        try {
            props = streamsConfig(args);
            topology = topology(args);
        } catch (IllegalArgumentException e) {
            System.err.println("kstreams peer: " + e.getMessage());
            System.exit(2);
            return;
        }
        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch closed = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) {
                say("running");
            } else if (now == KafkaStreams.State.ERROR) {
                System.err.println("kstreams peer: Kafka Streams went to ERROR");
                closed.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            closed.countDown();
        }, "peer-shutdown"));
        streams.start();
        try {
            closed.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    private static void markFirst() {
        if (!sawFirst) {
            sawFirst = true;
            say("first-record");
        }
    }

    static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (String a : argv) {
            int eq = a.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("argument `" + a + "`: expected name=value");
            }
            args.put(a.substring(0, eq), a.substring(eq + 1));
        }
        for (String required : new String[] {"brokers", "input", "output", "application-id", "mode"}) {
            if (!args.containsKey(required) || args.get(required).isEmpty()) {
                throw new IllegalArgumentException("argument `" + required + "` is required");
            }
        }
        return args;
    }

    /**
     * Kafka Streams' settings, each matched to what kwasm's host does
     * ({@code host/src/kafka/mod.rs}, {@code host/src/config.rs}):
     * <ul>
     * <li>at least once, committing every second: kwasm's {@code commit_interval_ms}
     *     (Kafka Streams' own default for at-least-once is 30 s);
     * <li>one stream thread per core: kwasm runs its plugin on {@code host.workers}
     *     (= cores) permits;
     * <li>producer {@code linger.ms=5}, idempotent, {@code acks=all}: kwasm's producer
     *     (Kafka Streams would set {@code linger.ms=100});
     *     {@code batch.size=1000000}: librdkafka's default per-partition batch
     *     (the Java client's is 16 KiB); no compression on either side;
     * <li>consumer {@code fetch.max.wait.ms=10}: kwasm's {@code fetch.wait.max.ms};
     *     {@code auto.offset.reset=earliest}, as kwasm's consumers;
     *     {@code max.poll.records} stays at Kafka Streams' 1000 (kwasm takes up to
     *     1024 per read of its fetch queue).
     * </ul>
     */
    static Properties streamsConfig(Map<String, String> args) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("application-id"));
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("brokers"));
        String guarantee = args.getOrDefault("guarantee", StreamsConfig.AT_LEAST_ONCE);
        boolean exactlyOnce;
        if (guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            exactlyOnce = false;
        } else if (guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2)) {
            exactlyOnce = true;
        } else {
            throw new IllegalArgumentException("guarantee: `" + guarantee + "` is neither "
                    + StreamsConfig.AT_LEAST_ONCE + " nor " + StreamsConfig.EXACTLY_ONCE_V2);
        }
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG,
                positive(args, "threads", Runtime.getRuntime().availableProcessors()));
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG,
                positive(args, "commit-interval-ms", exactlyOnce ? 100 : 1000));
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
        if (args.containsKey("state-dir")) {
            p.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
        }
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        p.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        p.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 1_000_000);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG), true);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "none");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG), 10);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        return p;
    }

    static Topology topology(Map<String, String> args) {
        String output = args.get("output");
        StreamsBuilder builder = new StreamsBuilder();
        KStream<byte[], byte[]> input = builder.stream(args.get("input"),
                Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()));
        Produced<byte[], byte[]> produced = Produced.with(Serdes.ByteArray(), Serdes.ByteArray());
        switch (args.get("mode")) {
            case "passthrough" -> input.peek((k, v) -> markFirst()).to(output, produced);
            case "transform" -> {
                JsonTransform transform = JsonTransform.fromArgs(args);
                String dlq = args.getOrDefault("dlq", output + ".dlq");
                // A value the transform refuses goes to the dead-letter topic
                // unchanged, as kwasm dead-letters a permanent error.
                var branches = input
                        .mapValues(v -> {
                            markFirst();
                            return transform.apply(v);
                        })
                        .split(Named.as("transform-"))
                        .branch((k, r) -> r.ok(), Branched.as("ok"))
                        .defaultBranch(Branched.as("failed"));
                branches.get("transform-ok").mapValues(JsonTransform.Result::value).to(output, produced);
                branches.get("transform-failed").mapValues(JsonTransform.Result::input).to(dlq, produced);
            }
            default -> throw new IllegalArgumentException(
                    "argument `mode`: expected `passthrough` or `transform`, got `" + args.get("mode") + "`");
        }
        return builder.build();
    }

    private static int positive(Map<String, String> args, String name, int fallback) {
        String raw = args.get(name);
        if (raw == null) {
            return fallback;
        }
        try {
            int v = Integer.parseInt(raw);
            if (v > 0) {
                return v;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new IllegalArgumentException("argument `" + name + "`: expected a positive integer, got `" + raw + "`");
    }
}
