// Connector/J through ferry and directly (tests/tests/clients.rs compares the two outputs).
//
//   java BatchClient ports URL USER PASS        five connections, SELECT @@port on each
//   java BatchClient batch URL USER PASS TABLE  batch inserts (one with a duplicate key) and updates
import java.sql.*;
import java.util.Arrays;

public class BatchClient {
    public static void main(String[] a) throws Exception {
        String mode = a[0], url = a[1], user = a[2], pass = a[3];
        if (mode.equals("ports")) {
            for (int i = 0; i < 5; i++) {
                try (Connection c = DriverManager.getConnection(url, user, pass);
                     Statement s = c.createStatement();
                     ResultSet r = s.executeQuery("SELECT @@port")) {
                    r.next();
                    System.out.println("port " + r.getInt(1));
                }
            }
            return;
        }
        String t = a[4];
        try (Connection c = DriverManager.getConnection(url, user, pass);
             Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS " + t);
            s.execute("CREATE TABLE " + t + " (id INT PRIMARY KEY, v VARCHAR(100))");
            try (PreparedStatement p = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                for (int i = 1; i <= 200; i++) {
                    p.setInt(1, i);
                    p.setString(2, "v" + i);
                    p.addBatch();
                }
                System.out.println("insert " + Arrays.toString(p.executeBatch()));
                for (int i : new int[] {201, 202, 5, 203}) {
                    p.setInt(1, i);
                    p.setString(2, "dup");
                    p.addBatch();
                }
                try {
                    p.executeBatch();
                    System.out.println("duplicate accepted");
                } catch (BatchUpdateException e) {
                    System.out.println("duplicate " + e.getErrorCode() + " " + Arrays.toString(e.getUpdateCounts()));
                }
            }
            try (PreparedStatement p = c.prepareStatement("UPDATE " + t + " SET v = ? WHERE id <= ?")) {
                p.setString(1, "x");
                p.setInt(2, 10);
                p.addBatch();
                p.setString(1, "y");
                p.setInt(2, 3);
                p.addBatch();
                System.out.println("update " + Arrays.toString(p.executeBatch()));
            }
            try (PreparedStatement p = c.prepareStatement("SELECT COUNT(*), SUM(id), SUM(v = 'x') FROM " + t + " WHERE id > ?")) {
                p.setInt(1, 0);
                try (ResultSet r = p.executeQuery()) {
                    r.next();
                    System.out.println("rows " + r.getLong(1) + " " + r.getLong(2) + " " + r.getLong(3));
                }
            }
            s.execute("DROP TABLE " + t);
        }
    }
}
