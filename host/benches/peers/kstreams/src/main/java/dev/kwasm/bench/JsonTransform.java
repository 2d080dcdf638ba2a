package dev.kwasm.bench;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.fasterxml.jackson.databind.node.TextNode;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The work of kwasm's {@code plugins/transform} (its README): on a JSON object
 * value, rename, then drop, then add fields at dotted paths; an added value is
 * JSON if it parses, else a string; missing parents are created. A value that is
 * not a JSON object, or a path through a non-object, is refused (kwasm
 * dead-letters it); a tombstone (null) passes as it is.
 */
final class JsonTransform {
    /** The outcome for one value: the new value, or the input refused with a reason. */
    record Result(byte[] value, byte[] input, String error) {
        boolean ok() {
            return error == null;
        }
    }

    /** As serde_json: a document with anything after its value is not JSON. */
    private static final ObjectMapper MAPPER =
            new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    private final List<String[][]> renames = new ArrayList<>();
    private final List<String[]> drops = new ArrayList<>();
    private final List<String[]> addPaths = new ArrayList<>();
    private final List<JsonNode> addValues = new ArrayList<>();

    static JsonTransform fromArgs(Map<String, String> args) {
        JsonTransform t = new JsonTransform();
        if (!args.containsKey("rename") && !args.containsKey("drop") && !args.containsKey("add")) {
            throw new IllegalArgumentException("mode=transform: set at least one of `rename`, `drop`, `add`");
        }
        for (String item : list(args.get("rename"))) {
            String[] lr = pair("rename", item);
            t.renames.add(new String[][] {path("rename", lr[0]), path("rename", lr[1])});
        }
        for (String item : list(args.get("drop"))) {
            t.drops.add(path("drop", item));
        }
        for (String item : list(args.get("add"))) {
            String[] lr = pair("add", item);
            t.addPaths.add(path("add", lr[0]));
            t.addValues.add(parseValue(lr[1]));
        }
        return t;
    }

    Result apply(byte[] value) {
        if (value == null) {
            return new Result(null, null, null);
        }
        JsonNode doc;
        try {
            doc = MAPPER.readTree(value);
        } catch (IOException e) {
            return new Result(null, value, "not JSON: " + e.getMessage());
        }
        if (doc == null || !doc.isObject()) {
            return new Result(null, value, "expected a JSON object");
        }
        ObjectNode root = (ObjectNode) doc;
        for (String[][] r : renames) {
            JsonNode moved = remove(root, r[0]);
            if (moved != null && !set(root, r[1], moved)) {
                return new Result(null, value, "cannot rename: a parent of the target path is not an object");
            }
        }
        for (String[] d : drops) {
            remove(root, d);
        }
        for (int i = 0; i < addPaths.size(); i++) {
            if (!set(root, addPaths.get(i), addValues.get(i).deepCopy())) {
                return new Result(null, value, "cannot add: a parent of the target path is not an object");
            }
        }
        try {
            return new Result(MAPPER.writeValueAsBytes(root), value, null);
        } catch (IOException e) {
            return new Result(null, value, "cannot serialise: " + e.getMessage());
        }
    }

    private static JsonNode remove(ObjectNode root, String[] path) {
        JsonNode node = root;
        for (int i = 0; i < path.length - 1; i++) {
            node = node.get(path[i]);
            if (node == null || !node.isObject()) {
                return null;
            }
        }
        return ((ObjectNode) node).remove(path[path.length - 1]);
    }

    private static boolean set(ObjectNode root, String[] path, JsonNode value) {
        ObjectNode node = root;
        for (int i = 0; i < path.length - 1; i++) {
            JsonNode child = node.get(path[i]);
            if (child == null) {
                child = node.putObject(path[i]);
            } else if (!child.isObject()) {
                return false;
            }
            node = (ObjectNode) child;
        }
        node.set(path[path.length - 1], value);
        return true;
    }

    private static List<String> list(String raw) {
        List<String> out = new ArrayList<>();
        if (raw != null) {
            for (String item : raw.split(",")) {
                if (!item.isBlank()) {
                    out.add(item.trim());
                }
            }
        }
        return out;
    }

    private static String[] pair(String key, String item) {
        int eq = item.indexOf('=');
        if (eq <= 0 || eq == item.length() - 1) {
            throw new IllegalArgumentException("argument `" + key + "`: expected `left=right`, got `" + item + "`");
        }
        return new String[] {item.substring(0, eq).trim(), item.substring(eq + 1).trim()};
    }

    private static String[] path(String key, String raw) {
        String[] parts = raw.split("\\.", -1);
        for (String p : parts) {
            if (p.isEmpty()) {
                throw new IllegalArgumentException("argument `" + key + "`: empty segment in path `" + raw + "`");
            }
        }
        return parts;
    }

    private static JsonNode parseValue(String raw) {
        try {
            return MAPPER.readTree(raw);
        } catch (IOException e) {
            return TextNode.valueOf(raw);
        }
    }
}
