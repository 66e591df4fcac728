-- sysbench script: every event is one short connection (connect, log in,
-- COM_QUIT, close), so events per second are logins per second.
-- Used by scripts/bench (phase logins) with the usual --mysql-* options.
function thread_init()
    drv = sysbench.sql.driver()
end

function event()
    local con = drv:connect()
    con:disconnect()
end
