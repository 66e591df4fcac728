// A JDBC client that sets up session state, then prints snapshots of it.
//
//   java -cp DIR:/usr/share/java/mariadb-java-client.jar StateClient SPEC_FILE JDBC_URL
//
// The spec file has the format described in state_client.py (SQL, PREP, EXEC,
// QUERY, END lines, tab-separated). PREP statements are prepared with
// Connection.prepareStatement (server-side with useServerPrepStmts=true in the
// URL) at their place in the set-up and executed once there. After set-up it
// prints one snapshot as a JSON line, then one more for every line read on
// stdin, until `quit` or end of input. Set-up errors exit with status 1.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public class StateClient {
    private final Connection conn;
    private final List<String[]> setup = new ArrayList<>();
    private final List<String[]> snapshot = new ArrayList<>();
    private final Map<String, PreparedStatement> prepared = new LinkedHashMap<>();
    private long handshakeId = -1;

    StateClient(Connection conn, List<String> spec) {
        this.conn = conn;
        for (String line : spec) {
            if (line.trim().isEmpty()) {
                continue;
            }
            String[] f = line.split("\t", -1);
            switch (f[0]) {
                case "SQL":
                case "PREP":
                    setup.add(f);
                    break;
                case "EXEC":
                case "QUERY":
                case "END":
                    snapshot.add(f);
                    break;
                default:
                    throw new IllegalArgumentException("bad spec line: " + line);
            }
        }
    }

    static String json(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20 || c > 0x7e) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
            }
        }
        return b.append('"').toString();
    }

    static String rows(ResultSet rs) throws SQLException {
        StringBuilder b = new StringBuilder("[");
        int cols = rs.getMetaData().getColumnCount();
        boolean firstRow = true;
        while (rs.next()) {
            b.append(firstRow ? "[" : ",[");
            firstRow = false;
            for (int i = 1; i <= cols; i++) {
                if (i > 1) {
                    b.append(',');
                }
                b.append(json(rs.getString(i)));
            }
            b.append(']');
        }
        return b.append(']').toString();
    }

    String runText(String sql) throws SQLException {
        try (Statement st = conn.createStatement()) {
            if (st.execute(sql)) {
                try (ResultSet rs = st.getResultSet()) {
                    return rows(rs);
                }
            }
            return "[]";
        }
    }

    static void bind(PreparedStatement ps, int i, String p) throws SQLException {
        int colon = p.indexOf(':');
        String kind = p.substring(0, colon);
        String v = p.substring(colon + 1);
        switch (kind) {
            case "i": ps.setLong(i, Long.parseLong(v)); break;
            case "s": ps.setString(i, v); break;
            case "x": {
                byte[] bytes = new byte[v.length() / 2];
                for (int k = 0; k < bytes.length; k++) {
                    bytes[k] = (byte) Integer.parseInt(v.substring(2 * k, 2 * k + 2), 16);
                }
                ps.setBytes(i, bytes);
                break;
            }
            case "f": ps.setDouble(i, Double.parseDouble(v)); break;
            case "dec": ps.setBigDecimal(i, new BigDecimal(v)); break;
            case "n": ps.setNull(i, Types.VARCHAR); break;
            default: throw new IllegalArgumentException("bad param " + p);
        }
    }

    String execute(String name, String[] f) throws SQLException {
        PreparedStatement ps = prepared.get(name);
        for (int k = 2; k < f.length; k++) {
            bind(ps, k - 1, f[k]);
        }
        if (ps.execute()) {
            try (ResultSet rs = ps.getResultSet()) {
                return rows(rs);
            }
        }
        return "[]";
    }

    String[] execLine(String name) {
        for (String[] f : snapshot) {
            if (f[0].equals("EXEC") && f[1].equals(name)) {
                return f;
            }
        }
        throw new IllegalArgumentException("PREP " + name + " has no EXEC line");
    }

    void setUp() throws SQLException {
        for (String[] f : setup) {
            try {
                if (f[0].equals("SQL")) {
                    runText(f[1]);
                } else {
                    prepared.put(f[1], conn.prepareStatement(f[2]));
                    execute(f[1], execLine(f[1]));
                }
            } catch (SQLException e) {
                throw new SQLException("set-up failed at " + String.join(" | ", f) + ": " + e.getMessage(), e);
            }
        }
    }

    String snap() {
        StringBuilder b = new StringBuilder("{\"client\":\"connector-j\",\"handshake_id\":" + handshakeId + ",\"results\":{");
        boolean first = true;
        for (String[] f : snapshot) {
            String name = f[0].equals("END") ? "end" : f[1];
            String value;
            try {
                if (f[0].equals("QUERY")) {
                    value = runText(f[2]);
                } else if (f[0].equals("EXEC")) {
                    value = execute(f[1], f);
                } else {
                    runText(f[1]);
                    continue;
                }
            } catch (SQLException e) {
                value = "{\"error\":" + json(e.getErrorCode() + " " + e.getMessage()) + "}";
            }
            b.append(first ? "" : ",").append(json(name)).append(':').append(value);
            first = false;
        }
        return b.append("}}").toString();
    }

    public static void main(String[] args) throws Exception {
        List<String> spec = Files.readAllLines(Paths.get(args[0]), StandardCharsets.UTF_8);
        Connection conn = DriverManager.getConnection(args[1]);
        StateClient client = new StateClient(conn, spec);
        // The connection id of the server's greeting (ferry's session id).
        client.handshakeId = conn.unwrap(org.mariadb.jdbc.MariaDbConnection.class).getServerThreadId();
        try {
            client.setUp();
        } catch (SQLException e) {
            System.err.println(e.getMessage());
            System.exit(1);
        }
        System.out.println(client.snap());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null && !line.trim().equals("quit")) {
            System.out.println(client.snap());
            System.out.flush();
        }
        conn.close();
    }
}
