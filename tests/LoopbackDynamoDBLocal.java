// Runs DynamoDB Local bound to 127.0.0.1 only.
//
// DynamoDB Local has no listen-address option: its Jetty server listens on every
// interface. This launcher builds the server exactly as the jar's own main does
// (same command-line arguments), then sets the host of its Jetty connector to
// loopback before starting it. Run with Java's single-file source launcher:
//   java -cp DynamoDBLocal.jar:DynamoDBLocal_lib/* -Djava.library.path=DynamoDBLocal_lib \
//        tests/LoopbackDynamoDBLocal.java -inMemory -port 8000
import java.lang.reflect.Field;
import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

public class LoopbackDynamoDBLocal {
    public static void main(String[] args) throws Exception {
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        Server jetty = null;
        for (Field f : DynamoDBProxyServer.class.getDeclaredFields()) {
            if (Server.class.isAssignableFrom(f.getType())) {
                f.setAccessible(true);
                jetty = (Server) f.get(proxy);
            }
        }
        if (jetty == null) {
            throw new IllegalStateException("no Jetty server inside DynamoDBProxyServer");
        }
        int bound = 0;
        for (Connector c : jetty.getConnectors()) {
            if (c instanceof ServerConnector) {
                ((ServerConnector) c).setHost("127.0.0.1");
                bound++;
            }
        }
        if (bound == 0) {
            throw new IllegalStateException("no Jetty connector to bind to loopback");
        }
        proxy.start();
        System.out.println("DynamoDB Local listening on 127.0.0.1 only");
        proxy.join();
    }
}
