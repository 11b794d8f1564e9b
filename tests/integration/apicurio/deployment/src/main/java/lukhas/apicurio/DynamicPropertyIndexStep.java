package lukhas.apicurio;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

import org.jboss.jandex.AnnotationInstance;
import org.jboss.jandex.AnnotationTarget;
import org.jboss.jandex.AnnotationValue;
import org.jboss.jandex.DotName;
import org.jboss.jandex.FieldInfo;
import org.jboss.jandex.Type;

import apicurio.common.app.components.config.index.DynamicPropertiesInfoRecorder;
import io.apicurio.common.apps.config.DynamicConfigPropertyDef;
import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import io.quarkus.arc.deployment.BeanArchiveIndexBuildItem;
import io.quarkus.arc.deployment.SyntheticBeanBuildItem;
import io.quarkus.deployment.annotations.BuildProducer;
import io.quarkus.deployment.annotations.BuildStep;
import io.quarkus.deployment.annotations.ExecutionTime;
import io.quarkus.deployment.annotations.Record;

/**
 * Lists the registry's dynamic configuration properties at build time: every field of a bean
 * archive that
 * carries Apicurio's {@code @Dynamic} next to MicroProfile's {@code @ConfigProperty}, typed
 * {@code Supplier<T>}. The list becomes the {@code DynamicConfigPropertyList} bean the
 * registry's configuration API reads.
 */
class DynamicPropertyIndexStep {

    private static final DotName DYNAMIC = DotName.createSimple("io.apicurio.common.apps.config.Dynamic");
    private static final DotName CONFIG_PROPERTY =
            DotName.createSimple("org.eclipse.microprofile.config.inject.ConfigProperty");

    @BuildStep
    @Record(ExecutionTime.RUNTIME_INIT)
    void dynamicProperties(BeanArchiveIndexBuildItem index, DynamicPropertiesInfoRecorder recorder,
            BuildProducer<SyntheticBeanBuildItem> beans) throws ClassNotFoundException {
        List<DynamicConfigPropertyDef> found = new ArrayList<>();
        for (AnnotationInstance dynamic : index.getIndex().getAnnotations(DYNAMIC)) {
            if (dynamic.target().kind() != AnnotationTarget.Kind.FIELD) {
                continue;
            }
            FieldInfo field = dynamic.target().asField();
            AnnotationInstance property = field.annotation(CONFIG_PROPERTY);
            if (property == null) {
                continue;
            }
            found.add(describe(field, property, dynamic));
        }
        found.sort(Comparator.comparing(DynamicConfigPropertyDef::getName));
        beans.produce(SyntheticBeanBuildItem.configure(DynamicConfigPropertyList.class)
                .runtimeValue(recorder.initializePropertiesInfo(found))
                .unremovable()
                .setRuntimeInit()
                .done());
    }

    private static DynamicConfigPropertyDef describe(FieldInfo field, AnnotationInstance property,
            AnnotationInstance dynamic) throws ClassNotFoundException {
        String name = property.value("name").asString();
        AnnotationValue fallback = property.value("defaultValue");
        if (fallback == null) {
            throw new IllegalStateException("dynamic property " + name + " has no default value");
        }
        Type valueType = field.type().asParameterizedType().arguments().get(0);
        Class<?> type = Class.forName(valueType.name().toString(), false,
                Thread.currentThread().getContextClassLoader());
        DynamicConfigPropertyDef def = new DynamicConfigPropertyDef(name, type, fallback.asString());
        AnnotationValue label = dynamic.value("label");
        AnnotationValue description = dynamic.value("description");
        AnnotationValue requires = dynamic.value("requires");
        if (label != null) {
            def.setLabel(label.asString());
        }
        if (description != null) {
            def.setDescription(description.asString());
        }
        if (requires != null) {
            def.setRequires(requires.asStringArray());
        }
        return def;
    }
}
